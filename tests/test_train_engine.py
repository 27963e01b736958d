"""fin3r.train: the engine on a tiny DUSt3R and the synthetic world -- outputs, frozen parts,
schedule, hooks, non-finite handling, bit-exact resume after SIGKILL, and 2-process DDP (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fin3r.train.engine as engine
from fin3r.config import load_config
from fin3r.train import TrainConfig, TrainHooks, TrainingDiverged, train
from fin3r.train.engine import lr_at

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


class StandInSampler:
    """Stand-in for fin3r.data.mixture.MixtureSampler (used only while that module is absent):
    per epoch, ``counts[s]`` random indices of each source in batches, batches shuffled, dealt
    round-robin to ranks."""

    def __init__(self, source_sizes, counts, batch_size, seed, rank=0, world_size=1):
        self.sizes, self.counts, self.bs = source_sizes, counts, batch_size
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches = []
        for s, n in self.counts.items():
            idx = torch.randint(0, self.sizes[s], (n,), generator=g).tolist()
            batches += [[(s, i) for i in idx[j:j + self.bs]] for j in range(0, n, self.bs)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter([batches[i] for i in order][self.rank::self.world_size])


def use_standin_sampler_if_needed() -> None:
    try:
        import fin3r.data.mixture  # noqa: F401
    except ImportError:
        def make(datasets, config, ctx):
            sizes = {"mono": len(datasets["mono"])}
            counts = {"mono": config.data.mono_per_epoch}
            if datasets.get("replay") is not None and config.data.replay_per_epoch:
                sizes["replay"], counts["replay"] = len(datasets["replay"]), config.data.replay_per_epoch
            return StandInSampler(sizes, counts, config.data.batch_size, config.seed, ctx.rank, ctx.world_size)

        engine.make_sampler = make


use_standin_sampler_if_needed()

TINY = ["model.name=dust3r_tiny", "data.height=32", "data.width=48", "data.world_mono_scenes=16",
        "data.world_replay_scenes=8", "data.mono_per_epoch=8", "data.replay_per_epoch=4", "data.batch_size=4",
        "data.heldout_images=2", "data.num_views=2", "optim.lr=5e-3", "optim.min_lr=1e-4", "optim.warmup_epochs=0.5",
        "lora.targets=[qkv,proj]", "lora.mode=weight_row", "distill.min_valid=20", "progress=false",
        "tensorboard=false", "log_every=1"]


def tiny_config(out_dir, *extra) -> TrainConfig:
    return load_config(TrainConfig, None, TINY + [f"out_dir={out_dir}", *extra])


def _adapter_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-5) and lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)


def test_train_end_to_end(tmp_path):
    calls = {"steps": 0, "epochs": []}

    def on_epoch_end(epoch, model, record):
        calls["epochs"].append(epoch)
        assert "feat_norm" in record and not model.training
        return {"my_eval": 1.0 + epoch}

    def on_step(step, record):
        calls["steps"] += 1
        assert torch.isfinite(torch.tensor(record["loss"]))

    torch.manual_seed(0)
    base = engine.load_base_model(tiny_config(tmp_path))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = tiny_config(tmp_path, "optim.epochs=2", "optim.accum_steps=2")
    result = train(cfg, model=base, hooks=TrainHooks(on_step=on_step, on_epoch_end=on_epoch_end))
    # 3 batches per epoch (2 mono + 1 replay), accumulated 2 -> 2 optimizer steps per epoch
    assert (result.steps, result.epochs, result.skipped_steps) == (4, 2, 0)
    assert calls == {"steps": 4, "epochs": [0, 1]}
    assert [r["my_eval"] for r in result.history] == [1.0, 2.0]
    assert set(result.base_feature_norm) == {"feat_norm", "feat_norm_prenorm"}
    # only the LoRA matrices trained; every base tensor is untouched
    after = result.model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    lora = _adapter_tensors(result.adapter_path)
    assert lora and all(".enc_blocks." in k or k.startswith("enc_blocks.") for k in lora)
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if k.endswith("lora_B"))
    # outputs
    for name in ("config.yaml", "metrics.jsonl", "metrics_step.csv", "metrics_epoch.csv", "checkpoints/last.pt",
                 "adapter_epoch000.safetensors", "adapter_epoch001.safetensors"):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert {"loss", "lr", "samples_per_s", "grad_norm"} <= set(records[0])
    assert any("loss_replay" in r for r in records if r["kind"] == "epoch")


def test_nonfinite_losses_are_skipped_then_abort(tmp_path):
    cfg = tiny_config(tmp_path / "a", "data.replay=none", "data.allow_no_replay=true", "optim.epochs=2",
                      "max_nonfinite=3")
    data = engine.build_datasets(cfg)

    class Poisoned(torch.utils.data.Dataset):
        def __init__(self, ds, bad):
            self.ds, self.bad = ds, bad

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            s = dict(self.ds[i])
            if self.bad(i):
                s["img"] = torch.full_like(s["img"], float("nan"))
            return s

    # every sample poisoned: each step is skipped; the third in a row aborts with a clear message
    all_bad = dict(data, mono=Poisoned(data["mono"], lambda i: True))
    with pytest.raises(TrainingDiverged, match="3 non-finite losses/gradients in a row"):
        train(cfg, model=engine.load_base_model(cfg), datasets=all_bad)
    # a few poisoned batches: skipped and counted, training completes, adapter stays finite
    cfg = tiny_config(tmp_path / "b", "data.replay=none", "data.allow_no_replay=true", "optim.epochs=2",
                      "max_nonfinite=3")
    some_bad = dict(data, mono=Poisoned(data["mono"], lambda i: i in (3, 7)))
    result = train(cfg, model=engine.load_base_model(cfg), datasets=some_bad)
    assert 0 < result.skipped_steps < result.steps
    assert all(torch.isfinite(v).all() for v in _adapter_tensors(result.adapter_path).values())


RUNNER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_train_engine as T
    from fin3r.train import TrainHooks, train
    out_dir, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    cfg = T.tiny_config(out_dir, *sys.argv[4:])
    def on_step(step, record):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, hooks=TrainHooks(on_step=on_step), resume=resume)
""")


def _run(out_dir, kill_at, resume, *extra, check=True):
    script = RUNNER.format(tests=str(TESTS))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", script, str(out_dir), str(kill_at), "1" if resume else "0", *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    extra = ["optim.epochs=2", "ckpt_every=2", "data.mono_per_epoch=12", "data.replay_per_epoch=8"]
    # 5 batches per epoch -> steps 1..10; checkpoints at steps 2, 4 (mid-epoch 0), 5 (epoch end), 6, 8
    full = tmp_path / "full"
    train(tiny_config(full, *extra))  # uninterrupted, in this process (1 thread, as the subprocess)
    killed = tmp_path / "killed"
    proc = _run(killed, 7, False, *extra, check=False)  # dies after step 7; last checkpoint: step 6
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapter.safetensors").exists()
    state = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 1)
    train(tiny_config(killed, *extra), resume=True)
    a, b = _adapter_tensors(full / "adapter.safetensors"), _adapter_tensors(killed / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    final = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert final["step"] == 10 and final["epoch"] == 2


DDP_RUNNER = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_train_engine as T
    from fin3r.lora import adapter_state_dict
    from fin3r.train import train
    out_dir = sys.argv[1]
    result = train(T.tiny_config(out_dir, "optim.epochs=1", "ckpt_every=0", "data.replay_per_epoch=8"))
    rank = int(os.environ["RANK"])
    torch.save(adapter_state_dict(result.model), os.path.join(out_dir, f"rank{{rank}}.pt"))
    assert result.steps == 2, result.steps  # 4 batches per epoch dealt to 2 ranks -> 2 steps each
""")


def test_ddp_two_processes_end_with_identical_adapters(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUNNER.format(tests=str(TESTS)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert any(float(v.abs().max()) > 0 for k, v in r0.items() if k.endswith("lora_B"))
    assert (tmp_path / "adapter.safetensors").is_file()


@pytest.mark.parametrize("name,size,views", [("mast3r_tiny", (32, 48), 2), ("cut3r_tiny", (32, 48), 3),
                                             ("vggt_tiny", (28, 42), 3)])
def test_every_family_trains(tmp_path, name, size, views):
    cfg = tiny_config(tmp_path, f"model.name={name}", f"data.height={size[0]}", f"data.width={size[1]}",
                      f"data.num_views={views}", "data.mono_per_epoch=4", "data.replay_per_epoch=4",
                      "lora.targets=[qkv]", "optim.epochs=1")
    result = train(cfg)
    record = result.history[-1]
    assert result.steps == 2 and result.skipped_steps == 0
    assert record["loss_mono"] != 0.0 and record["loss_replay"] != 0.0
    assert all(k.startswith(result.model.encoder_prefixes) for k in _adapter_tensors(result.adapter_path))


def test_real_replay_reader_from_config(tmp_path):
    """`data.replay_roots` feeds a TartanAir tree (raw layout, written here) as a replay source."""
    import numpy as np
    from PIL import Image

    traj = tmp_path / "tartanair" / "env" / "Easy" / "P000"
    (traj / "image_left").mkdir(parents=True)
    (traj / "depth_left").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(traj / "image_left" / f"{i:06d}_left.png")
        depth = 2.0 + rng.random((480, 640), dtype=np.float32)
        np.save(traj / "depth_left" / f"{i:06d}_left_depth.npy", depth)
    (traj / "pose_left.txt").write_text("".join(f"{0.1 * i} 0 0 0 0 0 1\n" for i in range(4)))
    cfg = tiny_config(tmp_path / "run", "data.replay=none", f"data.replay_roots={{tartanair: {tmp_path / 'tartanair'}}}",
                      "data.mono_per_epoch=4", "data.replay_per_epoch=4", "optim.epochs=1")
    with pytest.raises(Exception, match="unknown replay set"):
        engine.build_datasets(tiny_config(tmp_path / "x", "data.replay_roots={scannet: /nowhere}"))
    result = train(cfg)
    assert result.steps == 2 and "loss_tartanair" in result.history[-1]


def test_replay_roots_are_validated_and_no_replay_is_refused_unless_allowed(tmp_path):
    """A wrong replay root is one line naming the key; training without any replay (naive LoRA) is
    refused unless data.allow_no_replay=true."""
    from fin3r.errors import Fin3rError

    (tmp_path / "empty").mkdir()
    (tmp_path / "hs").mkdir()
    (tmp_path / "hs" / "metadata_camera_parameters.csv").write_text("not,a\ncamera,csv\n")
    for roots, message in ((f"{{tartanair: {tmp_path / 'nowhere'}}}", "data.replay_roots.tartanair=.*no such folder"),
                           (f"{{tartanair: {tmp_path / 'empty'}}}", "no tartanair sequence"),
                           (f"{{hypersim: {tmp_path / 'hs'}}}", "data.replay_roots.hypersim")):
        with pytest.raises(Fin3rError, match=message):
            engine.build_datasets(tiny_config(tmp_path / "x", "data.replay=none", f"data.replay_roots={roots}"))
    with pytest.raises(Fin3rError, match="allow_no_replay"):
        train(tiny_config(tmp_path / "a", "data.replay=none", "data.replay_roots={}", "max_steps=1"))
    with pytest.raises(Fin3rError, match="allow_no_replay"):
        train(tiny_config(tmp_path / "b", "data.replay_per_epoch=0", "max_steps=1"))
    assert train(tiny_config(tmp_path / "c", "data.replay=none", "data.allow_no_replay=true", "max_steps=1")).steps == 1


def test_metrics_csv_grows_its_header_and_resumes(tmp_path):
    import csv

    from fin3r.train.logging import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log({"kind": "step", "step": 1, "loss": 0.5})
    logger.log({"kind": "step", "step": 2, "loss": 0.4, "loss_mono": 0.3})  # a new column appears
    logger.close()
    resumed = MetricsLogger(tmp_path, tensorboard=False)  # a resumed run appends to the same file
    resumed.log({"kind": "step", "step": 3, "loss": 0.2})
    resumed.close()
    with open(tmp_path / "metrics_step.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["kind", "step", "loss", "loss_mono"], ["step", "1", "0.5", ""], ["step", "2", "0.4", "0.3"],
                    ["step", "3", "0.2", ""]]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
