"""scripts/pretrain_world.py: seeded, resumable in phases, and its output is a demo base."""

import importlib.util
import json
from pathlib import Path

import torch

from fin3r.demo import load_base

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_world.py"
TINY = ["--steps", "3", "--scenes", "3", "--views", "2", "--eval-scenes", "2", "--eval-every", "3",
        "--batch", "4", "--arch", json.dumps({"enc_depth": 1, "dec_depth": 1, "enc_embed_dim": 32,
                                              "dec_embed_dim": 32, "enc_num_heads": 2, "dec_num_heads": 2})]


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_world", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_base_and_phase_two_keeps_phase_one_card(tmp_path):
    main = _script().main
    threads = torch.get_num_threads()
    try:
        assert main(["--out", str(tmp_path / "a.safetensors"), "--seed", "3", *TINY]) == 0
        assert main(["--out", str(tmp_path / "b.safetensors"), "--seed", "3", *TINY]) == 0
        assert main(["--out", str(tmp_path / "c.safetensors"), "--init", str(tmp_path / "a.safetensors"),
                     "--pool", "16", *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    a, card_a = load_base(str(tmp_path / "a.safetensors"))
    b, _ = load_base(str(tmp_path / "b.safetensors"))
    c, card_c = load_base(str(tmp_path / "c.safetensors"))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name  # reproducible from the seed
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    assert card_a["steps_done"] == 3 and card_a["recipe"]["pool"] == 8 and len(card_a["trajectory"]) == 1
    assert card_c["recipe"]["pool"] == 16
    assert card_c["init"]["recipe"]["pool"] == 8 and card_c["init"]["trajectory"] == card_a["trajectory"]
    assert "init" not in card_a
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{ext}" for n in "abc" for ext in ("json", "safetensors"))  # no temporaries left
