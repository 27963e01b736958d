"""Mixed precision: under bf16 autocast the trunk runs in bf16 and every family's heads (hence
every output the losses read) in fp32; frozen block weights stored in bf16 train with fp32 LoRA
parameters and fp32 optimizer state."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fin3r.models import build_model

FAMILIES = [("dust3r_tiny", (32, 48), 2), ("mast3r_tiny", (32, 48), 2), ("cut3r_tiny", (32, 48), 2),
            ("vggt_tiny", (28, 42), 2), ("pi3_tiny", (28, 42), 2)]


def _float_outputs(pred) -> dict[str, torch.Tensor]:
    out = {}
    for f in dataclasses.fields(pred):
        value = getattr(pred, f.name)
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out[f"{f.name}[{i}]"] = v
    return out


@pytest.mark.parametrize("name,size,views", FAMILIES)
def test_heads_stay_fp32_under_bf16_autocast(name, size, views):
    torch.manual_seed(0)
    model = build_model(name).eval()
    img = torch.rand(1, 3, *size)
    linear_dtypes = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: linear_dtypes.add(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mono = model.predict_mono(img)
        multi = model.predict_views(torch.rand(1, views, 3, *size))
    assert torch.bfloat16 in linear_dtypes  # the trunk did run under autocast
    for pred in (mono, multi):
        outputs = _float_outputs(pred)
        assert outputs
        assert {k: v.dtype for k, v in outputs.items() if v.dtype != torch.float32} == {}


def test_frozen_weights_in_bf16_train_with_fp32_lora_and_optimizer(tmp_path):
    from fin3r.errors import Fin3rError
    from fin3r.lora import LoRALinear, load_adapter
    from fin3r.train import train
    from fin3r.train.model import load_base_model
    from test_train_engine import tiny_config

    with pytest.raises(Fin3rError, match="frozen_weights=bf16 needs autocast"):
        train(tiny_config(tmp_path / "fp32", "precision=fp32", "frozen_weights=bf16"))
    cfg = tiny_config(tmp_path / "run", "precision=bf16", "frozen_weights=bf16", "grad_checkpointing=true",
                      "optim.epochs=1")
    result = train(cfg)
    model = result.model
    assert result.steps == 3 and result.skipped_steps == 0
    lora_layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    in_blocks = {id(p) for b in model.checkpoint_blocks() for p in b.parameters()}
    adapted = {id(m.weight) for m in lora_layers} | {id(m.bias) for m in lora_layers if m.bias is not None}
    linear = {id(q) for m in model.modules() if type(m) is torch.nn.Linear for q in m.parameters()}
    for n, p in model.named_parameters():
        want = torch.bfloat16 if (id(p) in in_blocks and id(p) in linear and id(p) not in adapted) else torch.float32
        assert p.dtype == want, n
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k.startswith("exp_avg")]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    # the adapter still names the fp32 base it was trained on: it loads onto it with the hash check
    torch.manual_seed(cfg.seed)
    load_adapter(load_base_model(cfg), result.adapter_path, check_base=True)
