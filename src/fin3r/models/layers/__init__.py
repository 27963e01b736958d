"""Shared building blocks of the model zoo (one concept a file)."""

from fin3r.models.layers.activations import reg_dense_conf, reg_dense_depth, reg_desc
from fin3r.models.layers.attention import Attention, CrossAttention
from fin3r.models.layers.blocks import Block, DecoderBlock, LayerNorm
from fin3r.models.layers.mlp import Mlp
from fin3r.models.layers.patch_embed import PatchEmbed, patch_positions
from fin3r.models.layers.rope2d import RoPE2D, apply_rope2d, rope_cos_sin

__all__ = [
    "Attention", "Block", "CrossAttention", "DecoderBlock", "LayerNorm", "Mlp",
    "PatchEmbed", "RoPE2D", "apply_rope2d", "patch_positions",
    "reg_dense_conf", "reg_dense_depth", "reg_desc", "rope_cos_sin",
]
