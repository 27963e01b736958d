"""`fin3r eval` end to end on the exported synthetic world (tiny model), --compare, clear errors."""

import json

from fin3r.cli import main


def test_cli_world_export_monodepth_relpose_compare(tmp_path, capsys):
    data, out = str(tmp_path / "data"), tmp_path / "out"
    assert main(["eval", "world", "--out", data, "--num-images", "2", "--num-pairs", "1", "--num-scenes", "1",
                 "--views-per-scene", "2", "--height", "32", "--width", "48"]) == 0
    args = ["eval", "monodepth", "--model", "dust3r_tiny", "--random-weights", "--root", data, "--benchmarks", "world", "--quiet",
            "--set", "variants=[depth_scale_invariant]"]
    assert main(args + ["--out", str(out / "a")]) == 0
    assert "| dust3r_tiny |" in capsys.readouterr().out
    res = json.loads((out / "a/monodepth.json").read_text())
    assert res["task"] == "monodepth" and list(res["benchmarks"]) == ["world"]
    assert "depth_affine_invariant" not in res["benchmarks"]["world"]  # --set took effect
    res["model"] = "tuned"
    res["benchmarks"]["world"]["depth_scale_invariant"]["rel"] *= 0.5
    (out / "b.json").write_text(json.dumps(res))
    assert main(["eval", "--compare", str(out / "a/monodepth.json"), str(out / "b.json"), "--detail"]) == 0
    text = capsys.readouterr().out
    assert "| world | depth_scale_invariant.rel ↓ |" in text and "| yes |" in text
    rel = res["benchmarks"]["world"]["depth_scale_invariant"]["rel"]
    assert f"| tuned | {100 * rel:.2f} ({-100 * rel:+.2f}) |" in text  # paper table, difference to row 1
    assert r"\begin{tabular}" in text and "Protocol: monodepth: MoGe's monocular protocol" in text
    # a result against itself: the per-image records (read from monodepth/world.json beside it) pair up
    assert main(["eval", "--compare", str(out / "a/monodepth.json"), str(out / "a/monodepth.json"), "--format",
                 "markdown"]) == 0
    assert "(+0.00 ± 0.00)" in capsys.readouterr().out
    assert main(["eval", "relpose", "--model", "dust3r_tiny", "--random-weights", "--root", data, "--benchmark", "world_pairs",
                 "--quiet", "--out", str(out / "r")]) == 0
    assert "Translation error: signed" in capsys.readouterr().out
    assert main(["eval", "mvdepth", "--model", "dust3r_tiny", "--random-weights", "--root", data, "--benchmark", "world_scenes",
                 "--quiet", "--out", str(out / "m")]) == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "monodepth", "--model", "dust3r_tiny", "--random-weights", "--root", str(tmp_path), "--benchmarks", "NYUv2"]) == 2
    assert "benchmark NYUv2: missing folder" in capsys.readouterr().err
    assert main(["eval", "--compare", str(tmp_path / "x.json"), str(tmp_path / "y.json")]) == 2
    assert main(["eval"]) == 2
