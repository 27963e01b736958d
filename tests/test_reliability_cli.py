"""Misuse of every command ends in one line and a non-zero exit, never a traceback; values that
would run silently wrong (negative epochs, NaN learning rate, size 0) are refused at the edge,
naming the key or option, the value and what is allowed. Strict JSON everywhere."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fin3r.cli import main


def run_cli(argv, capsys):
    """(exit code, stderr) of ``fin3r argv`` in this process; argparse exits count as codes."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, err


def one_line_error(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert any(all(n in line for n in needles) for line in lines), err
    return True


TRAIN_VALUES = [
    ("optim.lr=-1", ["optim.lr=-1.0", "> 0"]),
    ("optim.lr=.nan", ["optim.lr=nan", "finite"]),
    ("data.batch_size=0", ["data.batch_size=0", ">= 1"]),
    ("data.height=-32", ["data.height=-32", ">= 1"]),
    ("device=tpu", ["device='tpu'", "cpu, cuda"]),
    ("seed=-1", ["seed=-1", ">= 0"]),
    ("optim.epochs=-1", ["optim.epochs=-1", ">= 1"]),
    ("max_steps=-5", ["max_steps=-5", ">= 0"]),
    ("optim.accum_steps=-1", ["optim.accum_steps=-1", ">= 1"]),
    ("data.num_workers=-1", ["data.num_workers=-1", ">= 0"]),
    ("data.max_bad_fraction=2", ["data.max_bad_fraction=2.0", "<= 1"]),
]


@pytest.mark.parametrize("override,needles", TRAIN_VALUES, ids=[o for o, _ in TRAIN_VALUES])
def test_train_config_values_are_validated_where_they_enter(override, needles, capsys):
    code, err = run_cli(["train", override, "--print-config"], capsys)
    assert one_line_error(code, err, *needles)


@pytest.mark.parametrize("override,needles", [("finetune.steps=-3", ["finetune.steps=-3", ">= 1"]),
                                              ("finetune.lr=nan", ["finetune.lr=nan", "finite"]),
                                              ("world.height=0", ["world.height=0", ">= 8"])])
def test_demo_config_values_are_validated_too(override, needles, capsys):
    code, err = run_cli(["demo", override], capsys)
    assert one_line_error(code, err, *needles)


def test_yaml_syntax_errors_and_tabs_are_one_line(tmp_path, capsys):
    (tmp_path / "tabs.yaml").write_text("optim:\n\tlr: 1\n")
    (tmp_path / "syntax.yaml").write_text("optim: [1, 2\n")
    code, err = run_cli(["train", str(tmp_path / "tabs.yaml"), "--print-config"], capsys)
    assert one_line_error(code, err, "tabs.yaml:2", "tab")
    code, err = run_cli(["train", str(tmp_path / "syntax.yaml"), "--print-config"], capsys)
    assert one_line_error(code, err, "syntax.yaml:2", "YAML syntax error")


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "imgs").mkdir()
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    Image.fromarray((np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "imgs" / "a.png")
    (tmp_path / "list.json").write_text("[1, 2]")
    return tmp_path


def test_an_output_path_that_is_an_existing_file_is_one_line_for_every_command(files, capsys):
    f = str(files / "afile")
    commands = {
        "label": ["label", "--teacher", "oracle", "--images", str(files / "imgs"), "--out", f],
        "train": ["train", f"out_dir={f}", "progress=false", "tensorboard=false"],
        "infer": ["infer", str(files / "img.png"), "--model", "dust3r_tiny", "--random-weights", "--out", f],
        "export": ["export", "--adapter", str(files / "missing.safetensors"), "--out", f + "/x.pth"],
        "eval": ["eval", "monodepth", "--model", "dust3r_tiny", "--random-weights", "--root", str(files / "imgs"), "--out", f],
        "diagnose": ["diagnose", "--model", "dust3r_tiny", "--random-weights", "--images", str(files / "imgs"), "--out", f],
        "demo": ["demo", "--quick", "--out", f],
    }
    for name, argv in commands.items():
        code, err = run_cli(argv, capsys)
        assert one_line_error(code, err, "afile", "existing file"), name


@pytest.mark.parametrize("option,value,needle", [
    ("--threads", "-1", "--threads"), ("--size", "0", "--size"), ("--conf-threshold", "nan", "--conf-threshold"),
    ("--device", "tpu", "--device"),
])
def test_infer_options_are_validated(files, capsys, option, value, needle):
    code, err = run_cli(["infer", str(files / "img.png"), "--model", "dust3r_tiny", "--random-weights", "--out", str(files / "o"),
                         option, value], capsys)
    assert one_line_error(code, err, needle, value)
    assert not (files / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(files, capsys):
    code, err = run_cli(["infer", str(files / "img.png"), "--model", "dust3r_tiny", "--random-weights", "--out", str(files / "o"),
                         "--device", "cuda"], capsys)
    assert one_line_error(code, err, "cuda", "no CUDA GPU")
    code, err = run_cli(["train", "device=cuda", f"out_dir={files / 'run'}", "progress=false"], capsys)
    assert one_line_error(code, err, "device='cuda'", "no CUDA GPU")


def test_diagnose_batch_size_zero_and_eval_compare_on_a_list(files, capsys):
    code, err = run_cli(["diagnose", "--model", "dust3r_tiny", "--random-weights", "--images", str(files / "imgs"), "--batch-size", "0",
                         "--out", str(files / "d")], capsys)
    assert one_line_error(code, err, "--batch-size", "0")
    code, err = run_cli(["eval", "--compare", str(files / "list.json"), str(files / "list.json")], capsys)
    assert one_line_error(code, err, "list.json", "not a fin3r eval result")


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import fin3r.commands.export as export_cmd

    def boom(args):
        raise RuntimeError("something odd\nsecond line")

    monkeypatch.setattr(export_cmd, "run", boom)
    code, err = run_cli(["export", "--adapter", "a", "--out", "b"], capsys)
    assert code == 1 and "unexpected error: RuntimeError: something odd second line" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(RuntimeError):
        main(["export", "--adapter", "a", "--out", "b", "--debug"])
    with pytest.raises(RuntimeError):
        main(["--debug", "export", "--adapter", "a", "--out", "b"])


def test_every_json_fin3r_writes_is_strict(tmp_path):
    from fin3r.eval.report import load_result, save_result
    from fin3r.io import json_text, write_json_atomic

    value = {"auc": float("nan"), "rel": 0.5, "deep": {"x": float("inf"), "x_null_reason": "base AUC is 0"},
             "list": [1.0, float("-inf")]}
    text = json_text(value)
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert strict["auc"] is None and "nan" in strict["auc_null_reason"]
    assert strict["deep"] == {"x": None, "x_null_reason": "base AUC is 0"} and strict["list"] == [1.0, None]
    save_result(tmp_path / "r.json", {"task": "t", "benchmarks": {"b": {"rel": float("nan")}}, "mean": {}})
    assert "NaN" not in (tmp_path / "r.json").read_text()
    assert math.isnan(load_result(tmp_path / "r.json")["benchmarks"]["b"]["rel"])  # read back as NaN
    write_json_atomic(tmp_path / "w.json", value)
    assert "NaN" not in (tmp_path / "w.json").read_text() and "Infinity" not in (tmp_path / "w.json").read_text()


def test_label_report_and_sidecars_are_strict_json(tmp_path):
    from fin3r.data.world import export_world_images

    export_world_images(tmp_path / "imgs", 1, 24, 32)
    assert main(["label", "--teacher", "oracle", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "l")]) == 0
    for p in (tmp_path / "l").rglob("*.json"):
        json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p}: non-standard constant {c}"))


def test_demo_pose_auc_change_against_a_zero_base_is_null_with_its_reason(tmp_path):
    """The demo's relative change / z of pose AUC@5 when the base's AUC is 0: NaN in the report,
    ``null`` with the reason beside it in report.json (strict readers refuse NaN)."""
    from fin3r.eval.paired import paired_auc_difference
    from fin3r.io import write_json_atomic

    base_err = torch.full((16,), 90.0)  # every base pose wrong: AUC 0 at every threshold
    tuned_err = torch.linspace(0.5, 30.0, 16)
    stats = paired_auc_difference(tuned_err, base_err, reps=20)
    assert stats["auc5"]["before"] == 0 and math.isnan(stats["auc5"]["rel"])
    write_json_atomic(tmp_path / "report.json", {"pose": {"fin3r": stats}})
    text = (tmp_path / "report.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    auc5 = loaded["pose"]["fin3r"]["auc5"]
    assert auc5["rel"] is None and "base's value is 0" in auc5["rel_null_reason"]


def test_every_command_sweeps_the_temp_files_a_killed_run_left(files, capsys):
    """Temp files of a dead writer are removed at the next start on the same output; a live
    writer's, other files, and files outside the output are kept."""
    import os
    import socket

    from fin3r.io import TEMP_SUFFIX

    host = socket.gethostname().replace(".", "-")
    out = files / "preds"
    out.mkdir()
    dead = out / f".x.png.{host}.999999999.ab12{TEMP_SUFFIX}"
    live = out / f".y.png.{host}.{os.getpid()}.cd34{TEMP_SUFFIX}"
    for p in (dead, live, out / "keep.txt", files / f".z.{host}.999999999.ef56{TEMP_SUFFIX}"):
        p.write_text("x")
    code, err = run_cli(["infer", str(files / "img.png"), "--model", "dust3r_tiny", "--random-weights", "--out", str(out),
                         "--no-progress"], capsys)
    assert code == 0, err
    assert not dead.exists() and live.exists() and (out / "keep.txt").exists()
    assert (files / f".z.{host}.999999999.ef56{TEMP_SUFFIX}").exists()  # outside --out: untouched
    # a file output: only the temp files of that file's name, beside it
    mine = files / f".m.pth.{host}.999999999.gh78{TEMP_SUFFIX}"
    other = files / f".n.pth.{host}.999999999.ij90{TEMP_SUFFIX}"
    mine.write_text("x")
    other.write_text("x")
    run_cli(["export", "--adapter", str(files / "missing.safetensors"), "--out", str(files / "m.pth")], capsys)
    assert not mine.exists() and other.exists()


def test_16bit_images_are_scaled_in_infer_and_diagnose_and_corrupt_ones_are_one_line(tmp_path, capsys):
    from fin3r.diagnose import load_images
    from fin3r.infer import prepare_image

    grey = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(grey).save(tmp_path / "imgs" / "deep.png")
    mean = float(grey.mean()) / 65535
    assert abs(float(prepare_image(tmp_path / "imgs" / "deep.png", 64, 16).img.mean()) - mean) < 0.02
    assert abs(float(load_images(tmp_path / "imgs", 32, 48).mean()) - mean) < 0.02  # convert("RGB"): ~0.98
    (tmp_path / "imgs" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    code, err = run_cli(["diagnose", "--model", "dust3r_tiny", "--random-weights", "--images", str(tmp_path / "imgs"), "--size", "32x48",
                         "--out", str(tmp_path / "d")], capsys)
    assert one_line_error(code, err, "zz_broken.png", "cannot read")
