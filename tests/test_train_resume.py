"""Resume that checks what it restores: the config that shapes the trainable tensors, missing or
mis-shaped tensors, and metric logs cut back to the checkpoint's step (no step logged twice)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fin3r.errors import Fin3rError
from fin3r.train import TrainHooks, train
from test_train_engine import tiny_config

SHORT = ["optim.epochs=2", "ckpt_every=2", "data.mono_per_epoch=12", "data.replay_per_epoch=8"]


class Crash(Exception):
    pass


def _crash_at(step_to_crash: int) -> TrainHooks:
    def on_step(step, record):
        if step == step_to_crash:
            raise Crash(step)

    return TrainHooks(on_step=on_step)


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """A run that died after step 7 (its last checkpoint: step 6, epoch 1, batch 1)."""
    out = tmp_path_factory.mktemp("crashed")
    with pytest.raises(Crash):
        train(tiny_config(out, *SHORT), hooks=_crash_at(7))
    return out


def _ckpt(out):
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("override,key", [("lora.rank=4", "lora.rank"), ("lora.targets=[qkv]", "lora.targets"),
                                          ("lora.mode=output", "lora.mode"), ("model.name=mast3r_tiny", "model.name")])
def test_resume_names_the_config_change_that_reshapes_the_state(crashed_run, tmp_path, override, key):
    out = _copy_run(crashed_run, tmp_path / "run")
    with pytest.raises(Fin3rError) as err:
        train(tiny_config(out, *SHORT, override), resume=True)
    message = str(err.value)
    assert "\n" not in message and key in message, message
    # the checkpoint records the shaping config itself (not only the whole config)
    assert _ckpt(out)["shaping_config"][key] is not None


def test_resume_refuses_missing_or_misshaped_tensors(crashed_run, tmp_path):
    state = _ckpt(crashed_run)
    names = sorted(state["trainable"])
    half = dict(state, trainable={n: state["trainable"][n] for n in names[: len(names) // 2]})
    torch.save(half, tmp_path / "half.pt")
    with pytest.raises(Fin3rError, match="missing"):
        train(tiny_config(tmp_path / "a", *SHORT), resume=tmp_path / "half.pt")
    bad = dict(state, trainable=dict(state["trainable"], **{names[0]: torch.zeros(3, 3)}))
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(Fin3rError, match="shape"):
        train(tiny_config(tmp_path / "b", *SHORT), resume=tmp_path / "bad.pt")


def test_resume_cuts_the_metric_logs_back_to_the_checkpoint(crashed_run, tmp_path):
    out = _copy_run(crashed_run, tmp_path / "run")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # step 7 ran after the last checkpoint (step 6)
    train(tiny_config(out, *SHORT), resume=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 11))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    with open(out / "metrics_step.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 11))
    with open(out / "metrics_epoch.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
