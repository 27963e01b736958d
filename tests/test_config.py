from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fin3r.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    mode: str | None = "weight_row"
    targets: list[str] = field(default_factory=lambda: ["qkv"])
    optim: Optim = field(default_factory=Optim)
    out: Path = Path("runs")


def test_defaults_and_yaml_roundtrip(tmp_path):
    cfg = Cfg(steps=3, optim=Optim(lr=2e-3))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Cfg, tmp_path / "c.yaml") == cfg
    assert load_config(Cfg) == Cfg()


def test_overrides_typed():
    cfg = load_config(Cfg, None, ["optim.lr=1e-3", "steps=7", "mode=null", "targets=[qkv,proj]"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 7 and cfg.mode is None and cfg.targets == ["qkv", "proj"]


@pytest.mark.parametrize(
    "override,needle",
    [("optim.lrr=1", "optim.lrr"), ("stepz=1", "stepz"), ("steps=abc", "steps"), ("optim.betas=[1]", "optim.betas")],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(Cfg, None, [override])


def test_unknown_key_in_file(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"optim\.momentum"):
        load_config(Cfg, tmp_path / "c.yaml")


def test_missing_file_and_bad_override_form(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])


def test_to_dict_from_dict_inverse():
    cfg = Cfg(name="a", targets=["fc1"], optim=Optim(lr=0.5))
    assert from_dict(Cfg, to_dict(cfg)) == cfg
