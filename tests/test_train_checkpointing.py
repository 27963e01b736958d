"""Activation checkpointing (every family, fp32): it changes no output and no gradient, it does
keep less for backward, and it reaches the frozen decoder blocks the gradient passes through."""

from __future__ import annotations

import pytest
import torch

from fin3r.config import load_config
from fin3r.models import build_model
from fin3r.train import TrainConfig
from fin3r.train.memory import trace_saved_tensors
from fin3r.train.model import inject_encoder_lora, set_train_mode

FAMILIES = [("dust3r_tiny", (32, 48), 2), ("mast3r_tiny", (32, 48), 2), ("cut3r_tiny", (32, 48), 3),
            ("vggt_tiny", (28, 42), 2), ("pi3_tiny", (28, 42), 2)]


def _adapted(name):
    torch.manual_seed(0)
    model = build_model(name)
    inject_encoder_lora(model, load_config(TrainConfig, None, ["lora.targets=[qkv]", "lora.mode=weight_row"]))
    with torch.no_grad():  # lora_B starts at zero: make every LoRA gradient non-trivial
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0.0, 0.05)
    set_train_mode(model)
    return model


def _outputs(pred) -> list[torch.Tensor]:
    return [v for v in vars(pred).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]


@pytest.mark.parametrize("name,size,views", FAMILIES)
def test_checkpointing_changes_no_output_and_no_gradient(name, size, views, monkeypatch):
    import fin3r.models.layers.checkpointing as ckpt

    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda block, *a, **k: calls.append(block) or real(block, *a, **k))
    model = _adapted(name)
    blocks = model.checkpoint_blocks()
    encoder = [n for n, _ in model.named_parameters() if n.startswith(model.encoder_prefixes)]
    assert blocks and encoder
    # the frozen decoder blocks are listed too, not only the encoder's
    block_names = {n for n, m in model.named_modules() if any(m is b for b in blocks)}
    assert any(not n.startswith(model.encoder_prefixes) for n in block_names), block_names
    torch.manual_seed(1)
    img, imgs = torch.rand(2, 3, *size), torch.rand(1, views, 3, *size)
    results = {}
    for enabled in (False, True):
        calls.clear()
        model.set_grad_checkpointing(enabled)
        model.zero_grad(set_to_none=True)
        with trace_saved_tensors(model, []) as trace:
            mono, multi = model.predict_mono(img), model.predict_views(imgs)
            outs = _outputs(mono) + _outputs(multi)
            sum(o.square().mean() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[enabled] = ([o.detach() for o in outs], grads, trace.total)
        # every listed block ran checkpointed (and none when off)
        assert {id(b) for b in calls} == ({id(b) for b in blocks} if enabled else set())
    (out0, grad0, saved0), (out1, grad1, saved1) = results[False], results[True]
    assert saved1 < saved0  # less kept for backward (the heads keep theirs)
    assert len(out0) == len(out1)
    for a, b in zip(out0, out1):
        assert torch.equal(a, b)
    assert grad0.keys() == grad1.keys() and all(g.abs().sum() > 0 for g in grad0.values())
    for n in grad0:
        torch.testing.assert_close(grad1[n], grad0[n], rtol=1e-5, atol=1e-7, msg=n)
