"""π3 (Wang et al., 2025; yyfz/Pi3) re-implemented with the official state_dict layout.

Architecture (official ``Pi3(pos_type='rope100', decoder_size='large')``):

- ``encoder``: DINOv2 ViT-L/14 with 4 registers, no ``mask_token`` -- **the encoder** Fin3R
  adapts (default LoRA targets: its 24 ``attn.qkv`` layers). Its patch tokens after the final
  norm (``x_norm_patchtokens``) enter the decoder. π3 initialised it from VGGT-1B's
  ``aggregator.patch_embed``.
- ``decoder``: ``decoder_depth`` (36) pre-norm blocks with LayerScale, qk-norm and RoPE2D
  (LayerNorm eps 1e-6): even layers attend within each frame, odd layers across all frames;
  ``register_token`` (5, shared by every frame) at RoPE position (0, 0), patches at (y+1, x+1).
  The outputs of the last two layers are concatenated (twice the width; no final norm).
- heads: ``point_decoder`` + ``point_head`` (a linear layer and a 14x pixel shuffle to
  ``(u, v, s)``; local points ``(u e^s, v e^s, e^s)``), ``conf_decoder`` + ``conf_head`` (logits),
  ``camera_decoder`` + ``camera_head`` (camera-to-world 4x4, OpenCV); the registers are dropped
  after the token decoders. Global ``points`` = each camera pose applied to its local points.
  The heads run in fp32 with autocast disabled, as in the official code; no view is a reference.

Inputs are float images in ``[0, 1]``; the ImageNet normalisation happens inside (persistent
buffers ``image_mean``/``image_std``, part of the official state_dict). H and W must be multiples of
14. Scale is arbitrary (π3 predicts scale-invariant local point maps and affine-invariant poses).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fin3r.geometry import invert_rigid, transform_points
from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction
from fin3r.models.layers.dinov2 import DinoV2Encoder
from fin3r.models.heads.linear import LinearPatchHead
from fin3r.models.layers.patch_embed import patch_positions
from fin3r.models.layers.rope2d import RoPE2D
from fin3r.models.layers.checkpointing import run_block
from fin3r.models.layers.vggt_blocks import LayerScaleBlock
from fin3r.models.pi3.configs import PI3_CONFIG, PI3X_CONFIG
from fin3r.models.pi3.conv_head import ConvHead
from fin3r.models.pi3.heads import CameraHead, TokenDecoder
from fin3r.models.pi3.metric_head import ContextDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: registers of the DINOv2 encoder (``dinov2_vitl14_reg``)
ENCODER_REGISTERS = 4
#: confidence logits are clamped here before ``1 + exp`` (fp32 overflow)
MAX_CONF_LOGIT = 80.0


def confidence_from_logits(logits: Tensor) -> Tensor:
    """π3's confidence logits -> fin3r's confidence ``1 + exp(logit) >= 1``.

    Monotone in π3's own score: ``sigmoid(logit) = 1 - 1 / conf`` (its examples keep pixels with
    ``sigmoid > 0.1``, i.e. ``conf > 1/0.9``).
    """
    return 1.0 + torch.exp(logits.clamp(max=MAX_CONF_LOGIT))


def decoder_positions(batch: int, h: int, w: int, num_special: int, device: torch.device) -> Tensor:
    """RoPE positions ``(batch, num_special + h*w, 2)``: special tokens at (0, 0), the patch at row y,
    column x at (y + 1, x + 1)."""
    special = torch.zeros(batch, num_special, 2, dtype=torch.long, device=device)
    return torch.cat((special, patch_positions(batch, h, w, device=device) + 1), dim=1)


def intrinsics_from_local_points(local_points: Tensor) -> Tensor:
    """Pinhole intrinsics ``(..., 3, 3)`` in pixels (pixel centres at integer coordinates) fitted to
    local points ``(..., H, W, 3)``: per axis, the least-squares line ``u = f x/z + c`` over all
    pixels (as π3's ``recover_intrinsic_from_rays_d`` with a free principal point)."""
    *batch, H, W, _ = local_points.shape
    p = local_points.double()
    z = p[..., 2].abs() + 1e-10
    v, u = torch.meshgrid(torch.arange(H, dtype=p.dtype, device=p.device),
                          torch.arange(W, dtype=p.dtype, device=p.device), indexing="ij")

    def fit(x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(-2)
        t = target.flatten().expand_as(x)
        xc, tc = x - x.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
        slope = (xc * tc).sum(-1) / (xc * xc).sum(-1).clamp_min(1e-12)
        return slope, t.mean(-1) - slope * x.mean(-1)

    fx, cx = fit(p[..., 0] / z, u)
    fy, cy = fit(p[..., 1] / z, v)
    K = torch.zeros(*batch, 3, 3, dtype=p.dtype, device=p.device)
    K[..., 0, 0], K[..., 0, 2], K[..., 1, 1], K[..., 1, 2], K[..., 2, 2] = fx, cx, fy, cy, 1.0
    return K.to(local_points.dtype)


class Pi3(Reconstructor):
    """π3 with the official state_dict keys.

    Args:
        img_size: DINOv2 position-embedding grid size in pixels (518 -> 37 x 37).
        patch_size: 14.
        embed_dim: width of the encoder and of the decoder (1024; see
            :mod:`fin3r.models.pi3.configs` for why they are one).
        encoder_depth, encoder_num_heads: DINOv2 (24, 16).
        decoder_depth, decoder_num_heads: alternating frame/global decoder (36, 16).
        mlp_ratio: of every block (4).
        num_register_tokens: decoder registers (5).
        head_dim, head_num_heads, head_depth: the three token decoders (1024, 16, 5).
        point_out_dim: output width of the point/confidence token decoders (1024).
        camera_out_dim: output width of the camera token decoder = camera head width (512).
        rope_freq: RoPE2D base frequency (``pos_type='rope100'``).
        dense_head: ``"linear"`` (π3: a linear layer + pixel shuffle) or ``"conv"`` (Pi3X: the
            MoGe-style :class:`~fin3r.models.pi3.conv_head.ConvHead`) for points and confidence.
        conv_dims, conv_res_blocks, conv_last_channels: the conv head (Pi3X: [256, 128, 64], 2, 32).
        max_log_depth: clamp of the predicted log-depth before ``exp`` (Pi3X: 15; π3: none).
        metric: the metric-scale branch (Pi3X): ``metric_token`` + ``metric_decoder`` (width
            ``metric_dim`` 512, ``metric_num_heads`` 8, ``metric_depth`` 5) + ``metric_head``;
            points, local points and translations are multiplied by its ``exp`` output.
    """

    family: ClassVar[str] = "pi3"
    patch_size: ClassVar[int] = 14
    encoder_prefixes: ClassVar[tuple[str, ...]] = ("encoder.",)
    checkpoint_block_lists: ClassVar[tuple[str, ...]] = ("encoder.blocks", "decoder")
    default_lora_targets: ClassVar[tuple[str, ...]] = ("encoder.blocks.*.attn.qkv",)

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, encoder_depth: int = 24,
                 encoder_num_heads: int = 16, decoder_depth: int = 36, decoder_num_heads: int = 16,
                 mlp_ratio: float = 4.0, num_register_tokens: int = 5, head_dim: int = 1024,
                 head_num_heads: int = 16, head_depth: int = 5, point_out_dim: int = 1024,
                 camera_out_dim: int = 512, rope_freq: float = 100.0, dense_head: str = "linear",
                 conv_dims: tuple[int, ...] | list[int] = (256, 128, 64), conv_res_blocks: int = 2,
                 conv_last_channels: int = 32, max_log_depth: float | None = None, metric: bool = False,
                 metric_dim: int = 512, metric_num_heads: int = 8, metric_depth: int = 5):
        super().__init__()
        if decoder_depth < 2 or decoder_depth % 2:
            raise ValueError(f"decoder_depth must be even and >= 2 (frame/global pairs), got {decoder_depth}")
        if dense_head not in ("linear", "conv"):
            raise ValueError(f"dense_head must be 'linear' or 'conv', got {dense_head!r}")
        self._config = dict(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, encoder_depth=encoder_depth,
            encoder_num_heads=encoder_num_heads, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads,
            mlp_ratio=float(mlp_ratio), num_register_tokens=num_register_tokens, head_dim=head_dim,
            head_num_heads=head_num_heads, head_depth=head_depth, point_out_dim=point_out_dim,
            camera_out_dim=camera_out_dim, rope_freq=float(rope_freq), dense_head=dense_head,
            conv_dims=list(conv_dims), conv_res_blocks=conv_res_blocks, conv_last_channels=conv_last_channels,
            max_log_depth=None if max_log_depth is None else float(max_log_depth), metric=bool(metric),
            metric_dim=metric_dim, metric_num_heads=metric_num_heads, metric_depth=metric_depth,
        )
        self.dense_head = dense_head
        self.max_log_depth = max_log_depth
        self.patch_size = patch_size
        self.encoder = DinoV2Encoder(img_size, patch_size, embed_dim, encoder_depth, encoder_num_heads, mlp_ratio,
                                     ENCODER_REGISTERS)
        del self.encoder.mask_token  # the official model deletes it too (not in its state_dict)
        self.rope = RoPE2D(freq=rope_freq)
        self.decoder = nn.ModuleList(
            LayerScaleBlock(embed_dim, decoder_num_heads, mlp_ratio, norm_eps=1e-6, qk_norm=True, rope=self.rope,
                            init_values=0.01)
            for _ in range(decoder_depth)
        )
        self.register_token = nn.Parameter(torch.randn(1, 1, num_register_tokens, embed_dim) * 1e-6)
        self.patch_start = num_register_tokens
        self.point_decoder = TokenDecoder(2 * embed_dim, head_dim, head_num_heads, head_depth, point_out_dim,
                                          mlp_ratio, self.rope)
        self.conf_decoder = TokenDecoder(2 * embed_dim, head_dim, head_num_heads, head_depth, point_out_dim,
                                         mlp_ratio, self.rope)
        if dense_head == "linear":
            self.point_head: nn.Module = LinearPatchHead(point_out_dim, 3, patch_size)
            self.conf_head: nn.Module = LinearPatchHead(point_out_dim, 1, patch_size)
        else:
            conv = dict(dims=list(conv_dims), res_blocks=conv_res_blocks, last_channels=conv_last_channels,
                        patch_size=patch_size)
            self.point_head = ConvHead(point_out_dim, [2, 1], **conv)
            self.conf_head = ConvHead(point_out_dim, [1], **conv)
        self.camera_decoder = TokenDecoder(2 * embed_dim, head_dim, head_num_heads, head_depth, camera_out_dim,
                                           mlp_ratio, self.rope)
        self.camera_head = CameraHead(camera_out_dim)
        self.has_metric = bool(metric)
        if metric:
            self.metric_token = nn.Parameter(torch.randn(1, 1, 2 * embed_dim) * 1e-6)
            self.metric_decoder = ContextDecoder(2 * embed_dim, metric_dim, metric_num_heads, metric_depth, metric_dim,
                                                 mlp_ratio, self.rope)
            self.metric_head = nn.Linear(metric_dim, 1)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    # --- configuration ----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"family": self.family, **json.loads(json.dumps(self._config))}

    @property
    def official_name(self) -> str | None:
        """What the official constructors build this architecture from, or None when they cannot
        (tiny test models: they hard-code the widths): ``"large"`` (``Pi3(decoder_size='large')``)
        or ``"pi3x"`` (``Pi3X(use_multimodal=False)``)."""
        ours = self.config_dict()
        ours.pop("family")
        rope = {"rope_freq": ours["rope_freq"]}
        if ours == json.loads(json.dumps({**PI3_CONFIG, **rope})):
            return "large"
        if ours == json.loads(json.dumps(PI3X_CONFIG)):
            return "pi3x"
        return None

    @property
    def official_architecture(self) -> bool:
        """Whether the official constructor builds this architecture from :meth:`hf_config`."""
        return self.official_name is not None

    def hf_config(self) -> dict[str, Any]:
        """``config.json`` for the official ``from_pretrained``: ``Pi3``'s ``pos_type`` and
        ``decoder_size``, or ``Pi3X``'s ``use_multimodal: false`` for the Pi3X heads; for
        architectures the official constructors cannot build fin3r writes its full config beside it."""
        if self._config["metric"] or self._config["dense_head"] != "linear":
            return {"ckpt": None, "use_multimodal": False}
        return {"pos_type": f"rope{self._config['rope_freq']:g}", "decoder_size": "large"}

    # --- forward ----------------------------------------------------------------------------
    def normalize(self, imgs: Tensor) -> Tensor:
        """``[0, 1]`` images ``(..., 3, H, W)`` -> ImageNet-normalised (the model's buffers)."""
        return (imgs - self.image_mean.to(imgs.dtype)) / self.image_std.to(imgs.dtype)

    def decode(self, tokens: Tensor, B: int, S: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Encoder patch tokens ``(B*S, h*w, C)`` -> ``(hidden (B*S, R + h*w, 2C), pos (B*S, R + h*w, 2))``."""
        C = tokens.shape[-1]
        registers = self.register_token.expand(B * S, -1, -1, -1).reshape(B * S, -1, C).to(tokens.dtype)
        x = torch.cat((registers, tokens), dim=1)
        P = x.shape[1]
        pos = decoder_positions(B * S, h, w, self.patch_start, tokens.device)
        pos_global = pos.reshape(B, S * P, 2)
        last: list[Tensor] = []
        n = len(self.decoder)
        for i, blk in enumerate(self.decoder):
            if i % 2 == 0:
                x = run_block(blk, x.reshape(B * S, P, C), pos)
            else:
                x = run_block(blk, x.reshape(B, S * P, C), pos_global)
            if i >= n - 2:
                last.append(x.reshape(B * S, P, C))
        return torch.cat(last, dim=-1), pos

    def forward(self, imgs: Tensor) -> dict[str, Tensor]:
        """Official outputs for ``imgs (B, S, 3, H, W)`` (or ``(S, 3, H, W)``) in ``[0, 1]``:

        - ``points (B, S, H, W, 3)``: every view's points in π3's world frame;
        - ``local_points (B, S, H, W, 3)``: each view's points in its own camera frame;
        - ``conf (B, S, H, W, 1)``: confidence logits;
        - ``camera_poses (B, S, 4, 4)``: camera-to-world (OpenCV).
        """
        if isinstance(imgs, Tensor) and imgs.ndim == 4:
            imgs = imgs[None]
        self.check_images(imgs, ndim=5)
        B, S, _, H, W = imgs.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = self.normalize(imgs).reshape(B * S, 3, H, W)
        tokens = self.encoder(x)["x_norm_patchtokens"]
        hidden, pos = self.decode(tokens, B, S, h, w)
        point_hidden = self.point_decoder(hidden, pos)
        conf_hidden = self.conf_decoder(hidden, pos)
        camera_hidden = self.camera_decoder(hidden, pos)
        r = self.patch_start
        metric_hidden = None
        if self.has_metric:
            pos_all = pos.reshape(B, -1, 2)
            token = self.metric_token.expand(B, -1, -1).to(hidden.dtype)
            metric_hidden = self.metric_decoder(token, hidden.reshape(B, -1, hidden.shape[-1]), pos_all[:, :1], pos_all)
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            uvs, conf = self._dense(point_hidden[:, r:].float(), conf_hidden[:, r:].float(), (h, w))
            uvs = uvs.permute(0, 2, 3, 1).reshape(B, S, H, W, 3)
            log_z = uvs[..., 2:] if self.max_log_depth is None else uvs[..., 2:].clamp(max=self.max_log_depth)
            z = torch.exp(log_z)
            local_points = torch.cat((uvs[..., :2] * z, z), dim=-1)
            conf = conf.permute(0, 2, 3, 1).reshape(B, S, H, W, 1)
            camera_poses = self.camera_head(camera_hidden[:, r:].float()).reshape(B, S, 4, 4)
            points = transform_points(camera_poses, local_points)
            out = {"points": points, "local_points": local_points, "conf": conf, "camera_poses": camera_poses}
            if metric_hidden is not None:
                metric = torch.exp(self.metric_head(metric_hidden.float())).reshape(B)
                out["points"] = points * metric.view(B, 1, 1, 1, 1)
                out["local_points"] = local_points * metric.view(B, 1, 1, 1, 1)
                poses = camera_poses.clone()
                poses[..., :3, 3] = poses[..., :3, 3] * metric.view(B, 1, 1)
                out["camera_poses"] = poses
                out["metric"] = metric
        return out

    def _dense(self, point_tokens: Tensor, conf_tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``((u, v, log z) (B*S, 3, H, W), confidence logits (B*S, 1, H, W))`` from the patch tokens."""
        if self.dense_head == "linear":
            H, W = grid[0] * self.patch_size, grid[1] * self.patch_size
            return self.point_head(point_tokens, (H, W)), self.conf_head(conf_tokens, (H, W))
        xy, log_z = self.point_head(point_tokens, grid)
        return torch.cat((xy, log_z), dim=1), self.conf_head(conf_tokens, grid)[0]

    def predict_mono(self, img: Tensor) -> MonoPrediction:
        """One view (S = 1): ``depth`` = z of the local points, ``conf`` = :func:`confidence_from_logits`
        of π3's confidence, ``pts3d`` = the local points (the image's own camera frame)."""
        self.check_images(img, ndim=4)
        out = self(img[:, None])
        local = out["local_points"][:, 0]
        return MonoPrediction(depth=local[..., 2], conf=confidence_from_logits(out["conf"][:, 0, ..., 0]),
                              pts3d=local)

    def predict_views(self, imgs: Tensor) -> ViewsPrediction:
        """All ``S`` views at once, re-expressed in view 0's camera frame.

        ``pts3d`` = π3's world points mapped by the inverse of view 0's predicted pose, ``cam2world``
        = ``inv(pose_0) @ pose_i`` (view 0 exactly the identity), ``conf`` = ``depth_conf`` =
        :func:`confidence_from_logits`, ``depth`` = z of each view's local points, ``intrinsics``
        fitted to the local points (:func:`intrinsics_from_local_points`). ``extras``: π3's own ``camera_poses (B, S, 4, 4)`` (camera-to-world
        in its arbitrary world frame), ``local_points (B, S, H, W, 3)``, ``points`` (its world
        frame) and ``conf_logits (B, S, H, W)``; Pi3X also ``metric (B,)``, the scale already
        applied to every output.
        """
        self.check_images(imgs, ndim=5)
        out = self(imgs)
        with torch.autocast(device_type=imgs.device.type, enabled=False):  # fp32, as the heads
            poses = out["camera_poses"]
            to_view0 = invert_rigid(poses[:, :1])  # (B, 1, 4, 4)
            conf = confidence_from_logits(out["conf"][..., 0])
            return ViewsPrediction(
                pts3d=transform_points(to_view0, out["points"]), conf=conf, cam2world=to_view0 @ poses,
                intrinsics=intrinsics_from_local_points(out["local_points"]), depth=out["local_points"][..., 2],
                depth_conf=conf,
                extras={"camera_poses": poses, "local_points": out["local_points"], "points": out["points"],
                        "conf_logits": out["conf"][..., 0], **({"metric": out["metric"]} if "metric" in out else {})},
            )

    def encode(self, img: Tensor) -> Tensor:
        """DINOv2 ``x_norm_patchtokens (B, h*w, C)`` -- what the decoder consumes."""
        self.check_images(img, ndim=4)
        return self.encoder(self.normalize(img))["x_norm_patchtokens"]

    def encode_prenorm(self, img: Tensor) -> Tensor:
        """DINOv2 patch tokens before the final norm, ``(B, h*w, C)`` (cls and registers removed)."""
        self.check_images(img, ndim=4)
        return self.encoder(self.normalize(img))["x_prenorm"][:, 1 + ENCODER_REGISTERS :]


__all__ = ["Pi3", "confidence_from_logits", "decoder_positions", "intrinsics_from_local_points", "IMAGENET_MEAN",
           "IMAGENET_STD"]
