"""Teachers as evaluation models: `fin3r eval monodepth --teacher SPEC` (same benchmarks, same protocol)."""

import importlib.util
import json

import pytest
import torch

from fin3r.cli import main
from fin3r.teachers.base import Teacher, TeacherOutput
from fin3r.teachers.evaluation import teacher_predictor


class _Fixed(Teacher):
    name = "fixed"

    def __init__(self, kind):
        self.depth_kind = kind

    def _predict(self, img, **_):
        B, _, H, W = img.shape
        depth = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W).expand(B, H, W).clone()
        mask = torch.ones(B, H, W, dtype=torch.bool)
        mask[:, 0, 0] = False
        return TeacherOutput(torch.where(mask, depth, torch.zeros_like(depth)), mask, self.depth_kind)


def test_predictor_keys_and_fill_by_kind():
    img = torch.rand(3, 4, 5)
    metric = teacher_predictor(_Fixed("metric"))(img)
    assert set(metric) == {"depth_metric", "depth_scale_invariant"} and metric["depth_metric"][0, 0] == 20  # farthest
    disp = teacher_predictor(_Fixed("affine_disparity"))(img)
    assert set(disp) == {"disparity_affine_invariant"} and disp["disparity_affine_invariant"][0, 0] == 2  # smallest
    assert set(teacher_predictor(_Fixed("scale"))(img)) == {"depth_scale_invariant"}
    assert set(teacher_predictor(_Fixed("affine"))(img)) == {"depth_affine_invariant"}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_eval_monodepth_teacher_cli(tmp_path, capsys):
    from fin3r.teachers.tiny import save_tiny_depth_anything

    data = str(tmp_path / "data")
    assert main(["eval", "world", "--out", data, "--num-images", "2", "--num-pairs", "1", "--num-scenes", "1",
                 "--views-per-scene", "2", "--height", "48", "--width", "64"]) == 0
    save_tiny_depth_anything(tmp_path / "da")
    out = tmp_path / "ev"
    assert main(["eval", "monodepth", "--teacher", f"hf:{tmp_path / 'da'}", "--root", data, "--benchmarks", "world",
                 "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "monodepth.json").read_text())
    assert res["model"] == "hf:da"
    world = res["benchmarks"]["world"]
    assert world["num_images"] == 2 and 0 <= world["disparity_affine_invariant"]["rel"] < 10
    assert "depth_scale_invariant" not in world  # a relative-disparity teacher is scored in disparity only
    capsys.readouterr()
    assert main(["eval", "monodepth", "--teacher", "oracle", "--root", data, "--benchmarks", "world"]) != 0
    assert "ground truth" in capsys.readouterr().err
    assert main(["eval", "monodepth", "--teacher", f"hf:{tmp_path / 'da'}", "--model", "dust3r_tiny", "--root", data]) != 0
    assert main(["eval", "monodepth", "--root", data]) != 0
    assert "--model or --teacher" in capsys.readouterr().err
