"""The known π3 architectures, as constructor kwargs of :class:`fin3r.models.pi3.model.Pi3`.

The official ``Pi3(pos_type='rope100', decoder_size='large')`` hard-codes everything but the RoPE
frequency and the decoder size; :data:`OFFICIAL_DECODER_SIZES` is its table. Only ``large`` runs
in the official code: its decoder consumes the encoder's 1024-wide tokens without a projection, so
the 384/768-wide ``small``/``base`` decoders cannot take them (their keys exist, their forward
fails). fin3r therefore builds the encoder and the decoder with one width, ``embed_dim``.
"""

from __future__ import annotations

from typing import Any

#: official ``decoder_size`` -> (decoder width, heads, depth); mlp ratio 4 for all
OFFICIAL_DECODER_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (384, 6, 24),
    "base": (768, 12, 24),
    "large": (1024, 16, 36),
}

#: the dense heads and the metric branch of π3 (linear heads, no metric scale); the defaults of
#: :class:`~fin3r.models.pi3.model.Pi3`
_PI3_HEADS: dict[str, Any] = dict(
    dense_head="linear", conv_dims=[256, 128, 64], conv_res_blocks=2, conv_last_channels=32, max_log_depth=None,
    metric=False, metric_dim=512, metric_num_heads=8, metric_depth=5,
)
#: Pi3X with its conditioning branches off (``Pi3X(use_multimodal=False)``, or ``disable_multimodal()``):
#: MoGe-style conv heads, log-depth clamped at 15, the metric-scale branch
_PI3X_HEADS: dict[str, Any] = {**_PI3_HEADS, "dense_head": "conv", "max_log_depth": 15.0, "metric": True}

#: ``Pi3(pos_type='rope100', decoder_size='large')`` -- the released yyfz/Pi3 model (959 M parameters)
PI3_CONFIG: dict[str, Any] = dict(
    img_size=518, patch_size=14, embed_dim=1024, encoder_depth=24, encoder_num_heads=16, decoder_depth=36,
    decoder_num_heads=16, mlp_ratio=4.0, num_register_tokens=5, head_dim=1024, head_num_heads=16, head_depth=5,
    point_out_dim=1024, camera_out_dim=512, rope_freq=100.0, **_PI3_HEADS,
)

#: a tiny random π3 for tests (66 k parameters), the architecture of the golden fixtures
PI3_TINY_CONFIG: dict[str, Any] = dict(
    img_size=42, patch_size=14, embed_dim=16, encoder_depth=2, encoder_num_heads=2, decoder_depth=4,
    decoder_num_heads=2, mlp_ratio=4.0, num_register_tokens=5, head_dim=16, head_num_heads=2, head_depth=2,
    point_out_dim=16, camera_out_dim=8, rope_freq=100.0, **_PI3_HEADS,
)

#: Pi3X (yyfz/Pi3X) with the conditioning branches off
PI3X_CONFIG: dict[str, Any] = {**PI3_CONFIG, **_PI3X_HEADS}

#: a tiny random Pi3X (conditioning off) for tests, the architecture of its golden fixtures
PI3X_TINY_CONFIG: dict[str, Any] = {
    **PI3_TINY_CONFIG, **_PI3X_HEADS, "conv_dims": [16, 16], "conv_res_blocks": 1, "conv_last_channels": 8,
    "metric_dim": 16, "metric_num_heads": 2, "metric_depth": 2,
}

#: registry name -> constructor kwargs
PI3_CONFIGS: dict[str, dict[str, Any]] = {"pi3": PI3_CONFIG, "pi3_tiny": PI3_TINY_CONFIG, "pi3x": PI3X_CONFIG,
                                          "pi3x_tiny": PI3X_TINY_CONFIG}

__all__ = ["OFFICIAL_DECODER_SIZES", "PI3_CONFIG", "PI3_TINY_CONFIG", "PI3X_CONFIG", "PI3X_TINY_CONFIG", "PI3_CONFIGS"]
