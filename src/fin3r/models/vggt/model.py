"""VGGT (Wang et al., CVPR 2025) re-implemented with the official state_dict layout.

Architecture (official ``VGGT(img_size=518, patch_size=14, embed_dim=1024)``):

- ``aggregator.patch_embed``: the per-image DINOv2 ViT-L/14 with 4 registers -- **the encoder**
  Fin3R adapts (default LoRA targets: its 24 ``attn.qkv`` layers);
- ``aggregator.{camera_token, register_token}`` and 24 alternating ``frame_blocks`` (attention
  within each view) / ``global_blocks`` (across all views) with qk-norm, LayerScale and RoPE2D;
- ``camera_head`` (pose encoding), ``depth_head`` and ``point_head`` (DPT). The official
  ``track_head`` is not built: loading a file that has it drops ``track_head.*`` and says so.

Inputs are float images in ``[0, 1]``; the ImageNet mean/std normalisation happens inside. H and W
must be multiples of 14 (VGGT was trained with width 518 and heights up to 518).

Outputs (:meth:`Vggt.forward`, the official names): ``depth (B, S, H, W, 1)`` (``exp``),
``depth_conf (B, S, H, W)``, ``world_points (B, S, H, W, 3)`` (``inv_log``) in the frame of the
first camera, ``world_points_conf``, ``pose_enc (B, S, 9)`` (camera-from-world, quaternion xyzw,
see :mod:`fin3r.models.heads.camera`) and ``pose_enc_list`` (one per refinement). Heads run in
fp32 with autocast disabled, as in the official code. The scale of depth and points is arbitrary
(normalised during training).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fin3r.errors import Fin3rError
from fin3r.geometry import depth_to_points
from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction
from fin3r.models.io import load_state_dict_strict
from fin3r.models.heads.camera import CameraHead, pose_encoding_to_cameras
from fin3r.models.layers.dinov2 import DinoV2Encoder
from fin3r.models.heads.dpt_vggt import VggtDPTHead
from fin3r.models.layers.patch_embed import patch_positions
from fin3r.models.layers.rope2d import RoPE2D
from fin3r.models.layers.checkpointing import run_block
from fin3r.models.layers.vggt_blocks import LayerScaleBlock

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: constructor kwargs of the official VGGT-1B (facebook/VGGT-1B, without the track head)
VGGT_1B_CONFIG: dict[str, Any] = dict(
    img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, num_register_tokens=4,
    encoder_depth=24, encoder_num_heads=16, dpt_features=256, dpt_out_channels=[256, 512, 1024, 1024],
    dpt_layers=[4, 11, 17, 23], camera_trunk_depth=4, camera_num_heads=16,
)

#: a tiny random VGGT for tests (~190k parameters), the configuration of the golden fixtures
VGGT_TINY_CONFIG: dict[str, Any] = dict(
    img_size=56, patch_size=14, embed_dim=24, depth=4, num_heads=2, mlp_ratio=4.0, num_register_tokens=4,
    encoder_depth=2, encoder_num_heads=2, dpt_features=8, dpt_out_channels=[4, 8, 16, 16],
    dpt_layers=[0, 1, 2, 3], camera_trunk_depth=2, camera_num_heads=2,
)

#: the heads fin3r builds, by their official ``enable_*`` flag
BUILT_HEADS = ("camera", "point", "depth")

TRACK_HEAD_PREFIX = "track_head."


def slice_special_tokens(tokens: Tensor, B: int, S: int) -> Tensor:
    """``(1, 2, X, C)`` learned tokens -> ``(B*S, X, C)``: index 0 for the first view of every
    sequence, index 1 for the other views."""
    first = tokens[:, :1].expand(B, 1, *tokens.shape[2:])
    others = tokens[:, 1:].expand(B, S - 1, *tokens.shape[2:])
    return torch.cat((first, others), dim=1).reshape(B * S, *tokens.shape[2:])


class Aggregator(nn.Module):
    """DINOv2 encoder + alternating frame/global attention.

    ``imgs (B, S, 3, H, W)`` normalised -> list of ``depth`` tensors ``(B, S, P, 2C)`` (frame and
    global outputs of each layer concatenated; ``P = 1 + R + h*w``, patch tokens from index
    ``patch_start = 1 + R``). Only the layers listed in ``keep`` are returned (others None).
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_register_tokens: int, encoder_depth: int, encoder_num_heads: int):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = DinoV2Encoder(img_size, patch_size, embed_dim, encoder_depth, encoder_num_heads,
                                         mlp_ratio, num_register_tokens)
        self.rope = RoPE2D(freq=100.0)
        self.frame_blocks = nn.ModuleList(
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, norm_eps=1e-5, qk_norm=True, rope=self.rope)
            for _ in range(depth)
        )
        self.global_blocks = nn.ModuleList(
            LayerScaleBlock(embed_dim, num_heads, mlp_ratio, norm_eps=1e-5, qk_norm=True, rope=self.rope)
            for _ in range(depth)
        )
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        self.patch_start = 1 + num_register_tokens

    def forward(self, imgs: Tensor, keep: set[int] | None = None) -> list[Tensor | None]:
        B, S, _, H, W = imgs.shape
        h, w = H // self.patch_size, W // self.patch_size
        patches = self.patch_embed(imgs.reshape(B * S, *imgs.shape[2:]))["x_norm_patchtokens"]
        special = torch.cat((slice_special_tokens(self.camera_token, B, S),
                             slice_special_tokens(self.register_token, B, S)), dim=1).to(patches.dtype)
        x = torch.cat((special, patches), dim=1)  # (B*S, P, C)
        P, C = x.shape[1:]
        # patch positions (y + 1, x + 1); the special tokens sit at (0, 0)
        pos = torch.cat((torch.zeros(B * S, self.patch_start, 2, dtype=torch.long, device=imgs.device),
                         patch_positions(B * S, h, w, device=imgs.device) + 1), dim=1)
        pos_global = pos.reshape(B, S * P, 2)
        outputs: list[Tensor | None] = []
        for i, (frame_blk, global_blk) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            x = run_block(frame_blk, x.reshape(B * S, P, C), pos)
            frame_out = x.reshape(B, S, P, C)
            x = run_block(global_blk, x.reshape(B, S * P, C), pos_global)
            global_out = x.reshape(B, S, P, C)
            outputs.append(torch.cat((frame_out, global_out), dim=-1) if keep is None or i in keep else None)
        return outputs


@dataclass
class VggtLoadReport:
    """What :meth:`Vggt.load_official` did: the source, how many tensors were loaded, which were
    dropped on purpose (``track_head.*`` when the model has no track head)."""

    source: str
    loaded: int
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.source}: loaded {self.loaded} tensors"
        if self.dropped:
            s += f"; dropped {len(self.dropped)} track_head.* tensors (the track head is not built)"
        return s


class Vggt(Reconstructor):
    """VGGT with the official state_dict keys (track head omitted).

    Args:
        img_size: DINOv2 position-embedding grid size in pixels (518 -> 37 x 37).
        patch_size: 14.
        embed_dim, depth, num_heads, mlp_ratio, num_register_tokens: aggregator (1024, 24, 16, 4, 4).
        encoder_depth, encoder_num_heads: DINOv2 encoder (24, 16; its width is ``embed_dim``).
        dpt_features, dpt_out_channels, dpt_layers: DPT heads (256, [256, 512, 1024, 1024], [4, 11, 17, 23]).
        camera_trunk_depth, camera_num_heads: camera head (4, 16).
        track_head: must be False; the track head is not implemented (official files that carry
            it load with ``track_head.*`` dropped, see :meth:`load_official`).
    """

    family: ClassVar[str] = "vggt"
    patch_size: ClassVar[int] = 14
    encoder_prefixes: ClassVar[tuple[str, ...]] = ("aggregator.patch_embed.",)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("aggregator.patch_embed.blocks.*.attn.qkv",)
    checkpoint_block_lists: ClassVar[tuple[str, ...]] = ("aggregator.patch_embed.blocks", "aggregator.frame_blocks",
                                                         "aggregator.global_blocks")

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
                 encoder_depth: int = 24, encoder_num_heads: int = 16, dpt_features: int = 256,
                 dpt_out_channels: tuple[int, ...] | list[int] = (256, 512, 1024, 1024),
                 dpt_layers: tuple[int, ...] | list[int] = (4, 11, 17, 23), camera_trunk_depth: int = 4,
                 camera_num_heads: int = 16, track_head: bool = False):
        super().__init__()
        if track_head:
            raise Fin3rError("Vggt(track_head=True): the VGGT track head is not implemented; build with "
                             "track_head=False (official files load with their track_head.* weights dropped)")
        if any(not 0 <= i < depth for i in dpt_layers):
            raise ValueError(f"dpt_layers {list(dpt_layers)} must index the {depth} aggregator layers")
        self._config = dict(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, num_register_tokens=num_register_tokens, encoder_depth=encoder_depth,
            encoder_num_heads=encoder_num_heads, dpt_features=dpt_features, dpt_out_channels=list(dpt_out_channels),
            dpt_layers=list(dpt_layers), camera_trunk_depth=camera_trunk_depth, camera_num_heads=camera_num_heads,
        )
        self.patch_size = patch_size
        self.aggregator = Aggregator(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                                     num_register_tokens, encoder_depth, encoder_num_heads)
        dim = 2 * embed_dim
        self.camera_head = CameraHead(dim, camera_trunk_depth, camera_num_heads, mlp_ratio)
        dpt = dict(patch_size=patch_size, features=dpt_features, out_channels=tuple(dpt_out_channels),
                   layers=tuple(dpt_layers))
        self.point_head = VggtDPTHead(dim, output_dim=4, activation="inv_log", **dpt)
        self.depth_head = VggtDPTHead(dim, output_dim=2, activation="exp", **dpt)
        #: set by :meth:`load_official`
        self.load_report: VggtLoadReport | None = None

    # --- configuration ----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"family": self.family, **json.loads(json.dumps(self._config))}

    def hf_config(self) -> dict[str, Any]:
        """``config.json`` for the official ``VGGT.from_pretrained``: its constructor kwargs, with
        ``enable_track=False`` (the weights hold no track head)."""
        config = {k: self._config[k] for k in ("img_size", "patch_size", "embed_dim")}
        return {**config, **{f"enable_{h}": True for h in BUILT_HEADS}, "enable_track": False}

    @property
    def official_architecture(self) -> bool:
        """Whether the official constructor builds this architecture from :meth:`hf_config` (it
        hard-codes everything but ``img_size``, ``patch_size`` and ``embed_dim`` to VGGT-1B's)."""
        official = {**VGGT_1B_CONFIG, **{k: self._config[k] for k in ("img_size", "patch_size", "embed_dim")}}
        ours = self.config_dict()
        ours.pop("family")
        return json.loads(json.dumps(official)) == ours

    # --- forward ----------------------------------------------------------------------------
    def normalize(self, imgs: Tensor) -> Tensor:
        """``[0, 1]`` images ``(..., 3, H, W)`` -> ImageNet-normalised."""
        shape = (3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=imgs.dtype, device=imgs.device).view(shape)
        std = torch.tensor(IMAGENET_STD, dtype=imgs.dtype, device=imgs.device).view(shape)
        return (imgs - mean) / std

    def forward(self, imgs: Tensor, heads: tuple[str, ...] = ("camera", "depth", "point")) -> dict[str, Tensor]:
        """Official-style outputs for ``imgs (B, S, 3, H, W)`` (or ``(S, 3, H, W)``) in ``[0, 1]``.

        ``heads`` selects which heads run (``"camera"``, ``"depth"``, ``"point"``).
        """
        if isinstance(imgs, Tensor) and imgs.ndim == 4:
            imgs = imgs[None]
        self.check_images(imgs, ndim=5)
        H, W = imgs.shape[-2:]
        keep: set[int] = set()
        if "camera" in heads:
            keep.add(len(self.aggregator.frame_blocks) - 1)
        if "depth" in heads or "point" in heads:
            keep.update(self.depth_head.layers)
        tokens = self.aggregator(self.normalize(imgs), keep=keep)
        tokens = [t.float() if t is not None else None for t in tokens]
        start = self.aggregator.patch_start
        out: dict[str, Tensor] = {}
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            if "camera" in heads:
                pose_enc_list = self.camera_head(tokens[-1])
                out["pose_enc"] = pose_enc_list[-1]
                out["pose_enc_list"] = torch.stack(pose_enc_list)
            if "depth" in heads:
                out["depth"], out["depth_conf"] = self.depth_head(tokens, start, (H, W))
            if "point" in heads:
                out["world_points"], out["world_points_conf"] = self.point_head(tokens, start, (H, W))
        return out

    def predict_mono(self, img: Tensor) -> MonoPrediction:
        """One view (S = 1): ``depth = depth[..., 0]``, ``conf = depth_conf`` (depth head).

        ``pts3d`` is the depth **unprojected with the predicted intrinsics** (so ``pts3d[..., 2] ==
        depth`` exactly, in the image's own camera frame). The point head's prediction (VGGT's world
        = this camera) is offered as ``depth_aux = [world_points[..., 2]]``, ``conf_aux =
        [world_points_conf]``.
        """
        self.check_images(img, ndim=4)
        out = self(img[:, None])
        H, W = img.shape[-2:]
        _, K = pose_encoding_to_cameras(out["pose_enc"][:, 0], (H, W))
        depth = out["depth"][:, 0, ..., 0]
        return MonoPrediction(
            depth=depth, conf=out["depth_conf"][:, 0], pts3d=depth_to_points(depth, K),
            depth_aux=[out["world_points"][:, 0, ..., 2]], conf_aux=[out["world_points_conf"][:, 0]],
        )

    def predict_views(self, imgs: Tensor) -> ViewsPrediction:
        """All ``S`` views at once.

        ``pts3d = world_points`` (VGGT's world frame is the camera of view 0), ``conf =
        world_points_conf``; ``cam2world`` / ``intrinsics`` from ``pose_enc`` (the predicted pose of
        view 0 is close to, not exactly, the identity; it is returned as predicted); ``depth`` /
        ``depth_conf`` from the depth head. ``extras``: ``pose_enc (B, S, 9)`` and
        ``pose_enc_list (iterations, B, S, 9)``.
        """
        self.check_images(imgs, ndim=5)
        out = self(imgs)
        cam2world, K = pose_encoding_to_cameras(out["pose_enc"], tuple(imgs.shape[-2:]))
        return ViewsPrediction(
            pts3d=out["world_points"], conf=out["world_points_conf"], cam2world=cam2world, intrinsics=K,
            depth=out["depth"][..., 0], depth_conf=out["depth_conf"],
            extras={"pose_enc": out["pose_enc"], "pose_enc_list": out["pose_enc_list"]},
        )

    def encode(self, img: Tensor) -> Tensor:
        """DINOv2 ``x_norm_patchtokens (B, h*w, C)`` -- what the aggregator consumes."""
        self.check_images(img, ndim=4)
        return self.aggregator.patch_embed(self.normalize(img))["x_norm_patchtokens"]

    def encode_prenorm(self, img: Tensor) -> Tensor:
        """DINOv2 patch tokens before the final norm, ``(B, h*w, C)`` (cls and registers removed)."""
        self.check_images(img, ndim=4)
        x = self.aggregator.patch_embed(self.normalize(img))["x_prenorm"]
        return x[:, self.aggregator.patch_start :]

    # --- official checkpoints -----------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, Tensor], source: str = "state_dict", assign: bool = False) -> None:
        """Strict loading after dropping ``track_head.*`` (logged, and kept in ``load_report``)."""
        self.load_official(state_dict, source, assign=assign)

    def load_official(self, state_dict: dict[str, Tensor], source: str = "state_dict",
                      assign: bool | None = None) -> VggtLoadReport:
        """Load official weights strictly, after dropping ``track_head.*`` (logged and reported).

        Raises :class:`CheckpointError` naming the missing / unexpected / mis-shaped keys.
        """
        state_dict, dropped = drop_track_head(state_dict)
        if dropped:
            logger.info("%s: dropped %d track_head.* tensors (the VGGT track head is not built)", source,
                        len(dropped))
        if assign is None:
            assign = any(p.is_meta for p in self.parameters())
        load_state_dict_strict(self, state_dict, source, assign=assign)
        self.load_report = VggtLoadReport(source=source, loaded=len(state_dict), dropped=dropped)
        return self.load_report


def drop_track_head(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """``(state_dict without track_head.*, the dropped keys)``."""
    dropped = [k for k in state_dict if k.startswith(TRACK_HEAD_PREFIX)]
    return {k: v for k, v in state_dict.items() if not k.startswith(TRACK_HEAD_PREFIX)}, dropped


__all__ = ["Vggt", "Aggregator", "VggtLoadReport", "VGGT_1B_CONFIG", "VGGT_TINY_CONFIG", "BUILT_HEADS",
           "drop_track_head", "slice_special_tokens"]
