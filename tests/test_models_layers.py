"""Shared CroCo-family layers: RoPE2D semantics, SDPA attention, DPT head, activations."""

import math

import pytest
import torch

from fin3r.models.heads.dpt_croco import DPTCroCo, dpt_hooks, dpt_widths_from_state_dict
from fin3r.models.layers import Attention, RoPE2D, patch_positions, reg_dense_conf, reg_dense_depth, reg_desc


def _table_rope(tokens, pos, base=100.0):
    """Reference: the official table lookup formulation (non-negative positions only)."""
    D = tokens.shape[-1] // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2).float() / D))
    t = torch.arange(int(pos.max()) + 1, dtype=torch.float32)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    freqs = torch.cat((freqs, freqs), dim=-1)
    cos, sin = freqs.cos(), freqs.sin()

    def rot(x):
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)

    def one(x, p):
        c = torch.nn.functional.embedding(p, cos)[:, None]
        s = torch.nn.functional.embedding(p, sin)[:, None]
        return x * c + rot(x) * s

    y, x = tokens.chunk(2, dim=-1)
    return torch.cat((one(y, pos[..., 0]), one(x, pos[..., 1])), dim=-1)


def test_rope_matches_table_formulation_bitwise():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 35, 64, generator=g)
    pos = patch_positions(2, 5, 7)
    assert torch.equal(RoPE2D(100.0)(tokens, pos), _table_rope(tokens, pos))


def test_rope_y_half_first_and_identity_at_origin():
    rope = RoPE2D(100.0)
    tokens = torch.randn(1, 1, 2, 16)
    pos = torch.tensor([[[0, 0], [0, 3]]])  # second token moves in x only
    out = rope(tokens, pos)
    assert torch.equal(out[:, :, 0], tokens[:, :, 0])  # position (0, 0) is the identity
    assert torch.equal(out[:, :, 1, :8], tokens[:, :, 1, :8])  # y half untouched by an x shift
    assert not torch.allclose(out[:, :, 1, 8:], tokens[:, :, 1, 8:])


def test_rope_negative_positions_are_relative():
    """<rope(q, p), rope(k, p')> depends only on p - p', also for negative positions."""
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 1, 1, 32, dtype=torch.float64).float(), torch.randn(1, 1, 1, 32)
    p1, p2 = torch.tensor([[[-1, -1]]]), torch.tensor([[[2, 5]]])
    shift = torch.tensor([[[4, -7]]])
    a = (rope(q, p1) * rope(k, p2)).sum()
    b = (rope(q, p1 + shift) * rope(k, p2 + shift)).sum()
    assert a.item() == pytest.approx(b.item(), abs=1e-4)
    # and -1 is the inverse rotation of +1
    back = rope(rope(q, torch.tensor([[[1, 1]]])), torch.tensor([[[-1, -1]]]))
    assert torch.allclose(back, q, atol=1e-6)


def test_rope_low_precision_rotates_in_float32():
    tokens = torch.randn(1, 2, 12, 64)
    pos = patch_positions(1, 3, 4) * 20
    out = RoPE2D()(tokens.bfloat16(), pos)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), RoPE2D()(tokens.bfloat16().float(), pos), atol=1e-2)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4, rope=RoPE2D()).eval()
    x = torch.randn(2, 12, 64)
    pos = patch_positions(2, 3, 4)
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, 4, 16).transpose(1, 3)
    q, k, v = [qkv[:, :, i] for i in range(3)]
    q, k = attn.rope(q, pos), attn.rope(k, pos)
    ref = ((q @ k.transpose(-2, -1)) * 16**-0.5).softmax(-1) @ v
    ref = attn.proj(ref.transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(attn(x, pos), ref, atol=1e-6)


@pytest.mark.parametrize("hw", [(336, 512), (512, 336), (16, 16), (48, 80)])
def test_dpt_full_resolution_any_grid(hw):
    H, W = hw
    dpt = DPTCroCo(4, dpt_hooks(10), [24, 16, 16, 16], layer_dims=(8, 8, 16, 16), feature_dim=16, last_dim=8)
    n = (H // 16) * (W // 16)
    tokens = [torch.randn(1, n, 24)] + [torch.randn(1, n, 16) for _ in range(10)]
    assert dpt(tokens, (H, W)).shape == (1, 4, H, W)
    keys = set(dpt.state_dict())
    assert "scratch.layer1_rn.weight" in keys and "head.4.weight" in keys and "act_postprocess.3.1.weight" in keys
    assert not any("layer_rn." in k for k in keys)
    assert dpt_widths_from_state_dict(dpt.state_dict(), "") == {"layer_dims": [8, 8, 16, 16], "feature_dim": 16,
                                                                 "last_dim": 8}


def test_dpt_needs_deep_decoder():
    with pytest.raises(ValueError, match="> 9"):
        dpt_hooks(8)
    assert dpt_hooks(12) == [0, 6, 9, 12]


def test_activations():
    xyz = torch.tensor([[3.0, 0.0, 4.0]])
    pts = reg_dense_depth(xyz, ("exp", -math.inf, math.inf))
    assert torch.allclose(pts, xyz / 5 * math.expm1(5.0))
    conf = reg_dense_conf(torch.tensor([0.0, 2.0]), ("exp", 1, math.inf))
    assert torch.allclose(conf, torch.tensor([2.0, 1 + math.exp(2.0)]))
    assert reg_dense_conf(torch.tensor([100.0]), ("exp", 0, 5)).item() == 5.0
    d = reg_desc(torch.randn(4, 8))
    assert torch.allclose(d.norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError):
        reg_dense_depth(xyz, ("exp", 0, math.inf))
