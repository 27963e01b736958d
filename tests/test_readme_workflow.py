"""The README's "Fin3R on real models" block, run as written on tiny stand-ins made here.

Every command of the block's code runs through ``fin3r.cli.main`` with the README's paths replaced
by tiny files in the real formats: an official-format DUSt3R ``.pth`` (tiny architecture), SA-1B
as a folder of ``sa_*.tar`` shards (jpg + json), a tiny MoGe-2 ``model.pt`` built with MoGe's own
classes (where MoGe is not installed: a Depth Anything folder saved with transformers' classes,
``moge:<ckpt>`` -> ``hf:<folder>``), Hypersim and TartanAir trees in their raw layouts, and
MoGe-layout benchmarks with the paper's seven names. The only additions
to a command are size overrides for ``fin3r train`` (resolution, samples per epoch, workers), so
the run fits a CPU test; if the README changes, this test runs the new text.
"""

import io
import json
import re
import shlex
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("h5py")
pytest.importorskip("transformers")

from fin3r.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: fin3r train: scale the recipe down to a CPU test (the workflow itself is unchanged)
TRAIN_SIZE = ["data.height=32", "data.width=48", "data.mono_per_epoch=4", "data.replay_per_epoch=2",
              "data.batch_size=2", "optim.accum_steps=1", "optim.epochs=1", "data.num_workers=0",
              "data.heldout_images=1", "data.mono_max_zoom=1.0", "progress=false", "tensorboard=false",
              "ckpt_every=0", "precision=fp32", "device=cpu"]


def readme_commands() -> list[str]:
    """The commands of the README's real-model block, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Fin3R on real models", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            commands.append(line)
    return commands


def _jpg(rng, h, w):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _sa1b(folder: Path, shards=2, per_shard=2):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(folder / f"sa_{s:06d}.tar", "w") as tar:
            for k in range(per_shard):
                image_id = s * per_shard + k + 1
                members = {f"sa_{image_id}.jpg": _jpg(rng, 48, 64),
                           f"sa_{image_id}.json": json.dumps({"image": {"image_id": image_id, "width": 64, "height": 48,
                                                                        "file_name": f"sa_{image_id}.jpg"},
                                                              "annotations": []}).encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _official_tiny_dust3r(path: Path) -> Path:
    from fin3r.models import build_model, save_official

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_official(build_model("dust3r_tiny").eval(), path)


def _replay_trees(tmp_path: Path) -> tuple[Path, Path]:
    import test_data_replay as replay

    K = torch.tensor([[28.0, 0, 15.5], [0, 28.0, 11.5], [0, 0, 1]])
    out = replay._world(K)
    hypersim, tartanair = tmp_path / "hypersim", tmp_path / "tartanair"
    hypersim.mkdir()
    replay._write_hypersim(hypersim, out, K.double().numpy())
    replay._write_tartanair(tartanair, out)
    return hypersim, tartanair


def _benchmarks(root: Path):
    from fin3r.eval.monodepth import PAPER_BENCHMARKS
    from fin3r.eval.world_benchmarks import export_world_monodepth

    world = export_world_monodepth(root / "_world", 2, 24, 32, seed=0)
    for name in PAPER_BENCHMARKS:  # the paper's seven names, tiny: benchmark.json sets their size
        (root / name).mkdir(parents=True)
        for entry in world.iterdir():
            if entry.is_dir():
                (root / name / entry.name).mkdir()
                for f in entry.iterdir():
                    (root / name / entry.name / f.name).write_bytes(f.read_bytes())
        (root / name / ".index.txt").write_text((world / ".index.txt").read_text())
        spec = json.loads((world / "benchmark.json").read_text())
        spec.update(path=name, input_long_side=64)
        (root / name / "benchmark.json").write_text(json.dumps(spec))


def _tiny_teacher(folder: Path) -> str:
    """MoGe's real package with a tiny random MoGe-2 ``model.pt`` (MoGe's format) when MoGe is
    installed, else a tiny transformers Depth Anything folder (``hf:``) standing in for it."""
    from fin3r.teachers import tiny

    try:
        import moge  # noqa: F401
    except ImportError:
        tiny.save_tiny_depth_anything(folder / "depth_anything")
        return f"hf:{folder / 'depth_anything'}"
    tiny.register_tiny_moge_backbone()
    path = folder / "moge-vitl.pt"
    tiny.save_tiny_moge(path, version=2)
    return f"moge:{path}"


def _photos(folder: Path, n=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    for i in range(n):
        Image.fromarray(scene[:, 4 * i:4 * i + 64]).save(folder / f"v{i}.png")


@pytest.mark.slow
def test_the_readme_real_model_workflow_runs_as_written(tmp_path, monkeypatch):
    commands = readme_commands()
    assert [c.split()[1] for c in commands][:7] == ["label"] * 4 + ["eval", "train", "export"]
    ckpt = _official_tiny_dust3r(tmp_path / "ckpts" / "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth")
    _sa1b(tmp_path / "data" / "sa1b")
    teacher = _tiny_teacher(tmp_path / "ckpts")
    hypersim, tartanair = _replay_trees(tmp_path / "data")
    _benchmarks(tmp_path / "data" / "moge_eval")
    _photos(tmp_path / "work" / "imgs")
    _photos(tmp_path / "work" / "images")
    replace = {
        "moge:/ckpts/moge-vitl.pt": teacher,
        "/ckpts/DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth": str(ckpt),
        "/data/sa1b_moge": str(tmp_path / "data" / "sa1b_moge"),
        "/data/sa1b": str(tmp_path / "data" / "sa1b"),
        "/data/hypersim": str(hypersim),
        "/data/tartanair": str(tartanair),
        "/data/moge_eval": str(tmp_path / "data" / "moge_eval"),
        "configs/": str(ROOT / "configs") + "/",
    }
    monkeypatch.chdir(tmp_path / "work")
    pattern = re.compile("|".join(re.escape(k) for k in sorted(replace, key=len, reverse=True)))
    for command in commands:
        command = pattern.sub(lambda m: replace[m.group(0)], command)
        argv = shlex.split(command)
        assert argv[0] == "fin3r", command
        argv = argv[1:]
        if argv[0] == "train":
            argv += TRAIN_SIZE
        if argv[0] == "infer":
            argv += ["--no-progress"]
        assert main(argv) == 0, command
    work = tmp_path / "work"
    # what the workflow promised: labels for every SA-1B image, an official .pth, evaluations, scene cameras
    reports = [json.loads((tmp_path / "data" / "sa1b_moge" / f"label_report_{i}of4.json").read_text()) for i in range(4)]
    assert sum(r["labelled"] for r in reports) == 4
    obj = torch.load(work / "dust3r_fin3r.pth", map_location="cpu", weights_only=False)
    assert obj["args"].model.startswith("AsymmetricCroCo3DStereo(")
    assert (work / "eval" / "tuned" / "monodepth.json").is_file()
    cameras = json.loads((work / "scene" / "cameras.json").read_text())["cameras"]
    assert len(cameras) == 3 and all("K" in c and "cam2world" in c for c in cameras)
