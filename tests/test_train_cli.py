"""`fin3r train` on the command line: configs/*.yaml parse, --print-config, a short run, --resume."""

from pathlib import Path

import pytest
import yaml

from fin3r.cli import main
from fin3r.config import load_config
from fin3r.train import TrainConfig

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("name", ["world_tiny", "dust3r", "mast3r", "cut3r", "vggt", "pi3"])
def test_shipped_configs_parse(name):
    config = load_config(TrainConfig, CONFIGS / f"{name}.yaml")
    from fin3r.models import MODEL_CONFIGS

    assert config.model.name in MODEL_CONFIGS
    assert config.lora.targets == ["qkv"] and config.lora.rank == 8 and config.lora.alpha == 8.0
    assert config.grad_checkpointing == (name != "world_tiny")  # on in every full-size recipe


def test_print_config_and_bad_key(capsys):
    assert main(["train", str(CONFIGS / "world_tiny.yaml"), "optim.lr=3e-4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-4 and printed["model"]["name"] == "dust3r_tiny"
    assert main(["train", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err


def test_cli_run_then_resume_is_a_no_op(tmp_path, capsys, caplog):
    args = ["train", str(CONFIGS / "world_tiny.yaml"), f"out_dir={tmp_path}", "optim.epochs=1",
            "data.mono_per_epoch=8", "data.replay_per_epoch=8", "data.world_mono_scenes=8",
            "data.world_replay_scenes=4", "data.heldout_images=2", "progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps (1 epochs, 0 skipped)" in out and "encoder feature norm" in out
    assert (tmp_path / "adapter.safetensors").is_file()
    assert main(args + ["--resume"]) == 0  # finished run: resumes at the end, trains nothing more
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(args + ["optim.lr=2e-3", "--resume"]) == 0
    assert "resuming with a different config (optim.lr)" in caplog.text


def test_dry_run_counts_equal_a_real_build(tmp_path, capsys):
    from fin3r.train.memory import estimate_memory
    from fin3r.train.model import inject_encoder_lora, load_base_model

    config = load_config(TrainConfig, CONFIGS / "world_tiny.yaml", [f"out_dir={tmp_path / 'run'}"])
    real = load_base_model(config)
    inject_encoder_lora(real, config)
    total = sum(p.numel() for p in real.parameters())
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    estimate = estimate_memory(config)
    assert (estimate.params_total, estimate.params_trainable) == (total, trainable)
    assert estimate.optimizer_bytes == 8 * trainable
    assert all(v > 0 for v in estimate.activations.values()) and set(estimate.activations) == {"mono", "replay"}
    assert all(estimate.activations_ckpt[k] < estimate.activations[k] for k in estimate.activations)
    assert main(["train", str(CONFIGS / "world_tiny.yaml"), f"out_dir={tmp_path / 'run'}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{total:,} parameters, {trainable:,} trainable" in out and "fits 24 GB yes" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
