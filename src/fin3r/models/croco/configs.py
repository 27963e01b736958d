"""Known DUSt3R / MASt3R configurations (constructor kwargs by registry name)."""

from __future__ import annotations

import math
from typing import Any

inf = math.inf
_CROCO_LARGE = dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                    dec_num_heads=12, depth_mode=["exp", -inf, inf], conf_mode=["exp", 1, inf], pos_embed="RoPE100")

#: DUSt3R: the released models, tiny random configs for tests (a few hundred k parameters; decoder
#: depth 10 for the DPT head) and a small DUSt3R for the CPU demo (~10.6M parameters, 2.8M of them
#: in the encoder)
DUST3R_CONFIGS: dict[str, dict[str, Any]] = {
    "dust3r_224_linear": dict(head_type="linear", output_mode="pts3d", img_size=[224, 224], **_CROCO_LARGE),
    "dust3r_512_linear": dict(head_type="linear", output_mode="pts3d", img_size=[512, 512], **_CROCO_LARGE),
    "dust3r_512_dpt": dict(head_type="dpt", output_mode="pts3d", img_size=[512, 512], **_CROCO_LARGE),
    "dust3r_tiny": dict(head_type="dpt", output_mode="pts3d", img_size=[64, 64], enc_embed_dim=64, enc_depth=3,
                        enc_num_heads=2, dec_embed_dim=32, dec_depth=10, dec_num_heads=2,
                        dpt_layer_dims=[16, 16, 32, 32], dpt_feature_dim=16, dpt_last_dim=16),
    "dust3r_tiny_linear": dict(head_type="linear", output_mode="pts3d", img_size=[64, 64], enc_embed_dim=64,
                               enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=2),
    "dust3r_small": dict(head_type="dpt", output_mode="pts3d", img_size=[224, 224], enc_embed_dim=192, enc_depth=6,
                         enc_num_heads=3, dec_embed_dim=128, dec_depth=10, dec_num_heads=4,
                         dpt_layer_dims=[24, 48, 96, 192], dpt_feature_dim=64, dpt_last_dim=32),
}

#: MASt3R: the released metric model and a tiny test config
MAST3R_CONFIGS: dict[str, dict[str, Any]] = {
    "mast3r_512_catmlpdpt_metric": dict(head_type="catmlp+dpt", output_mode="pts3d+desc24", img_size=[512, 512],
                                        two_confs=True, desc_conf_mode=["exp", 0, inf], **_CROCO_LARGE),
    "mast3r_tiny": dict(head_type="catmlp+dpt", output_mode="pts3d+desc8", img_size=[64, 64], enc_embed_dim=64,
                        enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=10, dec_num_heads=2,
                        dpt_layer_dims=[16, 16, 32, 32], dpt_feature_dim=16, dpt_last_dim=16, two_confs=True,
                        desc_conf_mode=["exp", 0, inf], head_hidden_dim_factor=0.25),
}

__all__ = ["DUST3R_CONFIGS", "MAST3R_CONFIGS"]
