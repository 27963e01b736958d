"""CUT3R (``ARCroco3DStereo``, Wang et al., CVPR 2025) re-implemented with the official state_dict layout.

A CroCo ViT encoder reads each frame; a recurrent **state** (``state_size`` tokens, initialised
from the learned ``register_tokens``) and the frame's tokens are decoded together by two
interleaved decoders -- ``dec_blocks_state`` (state stream, ``state_dec_num_heads`` = 16 heads in
the released models) and ``dec_blocks`` (image stream, ``dec_num_heads`` = 12 heads; same
parameter shapes, so a wrong head count would load silently). A **pose token** at position
(-1, -1) is prepended to the image stream: the learned ``pose_token`` for the first frame, then
one read from the **pose retriever** (:class:`~fin3r.models.cut3r.blocks.LocalMemory`).
After each frame the state becomes the state stream's output and the memory is written.

Keys (the official ones, checked in ``tests/test_models_cut3r.py``): ``patch_embed``, ``enc_blocks``, ``enc_norm`` (the
image encoder, the part Fin3R adapts); the ray-map encoder ``patch_embed_ray_map``,
``enc_blocks_ray_map``, ``enc_norm_ray_map`` and ``masked_img_token``/``masked_ray_map_token``
(kept so official files load with ``strict=True``; unused for image input, where the official
forward adds the ray-map branch multiplied by 0); ``register_tokens``, ``decoder_embed_state``,
``dec_blocks_state``, ``dec_norm_state``, ``decoder_embed``, ``dec_blocks``, ``dec_norm``,
``pose_token``, ``pose_retriever``, ``downstream_head`` (:mod:`fin3r.models.cut3r.heads`).

Inputs are float images in ``[0, 1]`` (mapped to ``[-1, 1]`` inside), H and W multiples of 16
(released models: 512 x {384 ... 160} and portrait; the 224 model 224 x 224). Outputs per frame
(:meth:`Cut3r.forward`) use the official names; points are approximately metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fin3r.models.base import MonoPrediction, Reconstructor, ViewsPrediction
from fin3r.models.croco.encoder import CroCoEncoderMixin, rope_freq
from fin3r.models.layers.blocks import Block, DecoderBlock, LayerNorm
from fin3r.models.layers.checkpointing import run_block
from fin3r.models.cut3r.blocks import LocalMemory, cut3r_encoder_block
from fin3r.models.cut3r.heads import Cut3rDPTHead, Cut3rLinearHead, camera_pose_to_cam2world
from fin3r.models.heads.dpt_croco import OFFICIAL_FEATURE_DIM, OFFICIAL_LAYER_DIMS
from fin3r.models.layers.patch_embed import PatchEmbed
from fin3r.models.layers.rope2d import RoPE2D

inf = math.inf
_DPT_NAMES = ("dpt_self", "dpt_cross", "dpt_rgb")


def _mode(mode: Sequence) -> tuple[str, float, float]:
    """Official activation modes as tuples (JSON gives lists)."""
    return (str(mode[0]), float(mode[1]), float(mode[2]))


def state_positions(state_size: int, state_pe: str = "2d") -> Tensor:
    """``(state_size, 2)`` int64 (y, x) positions of the state tokens.

    ``'2d'``: a row-major grid of width ``int(sqrt(state_size))``, bumped to the next even number
    when odd (768 tokens -> width 28); ``'1d'``: ``(i, i)``.
    """
    i = torch.arange(state_size)
    if state_pe == "2d":
        width = int(state_size**0.5)
        width = width + 1 if width % 2 == 1 else width
        return torch.stack((i // width, i % width), dim=-1)
    if state_pe == "1d":
        return torch.stack((i, i), dim=-1)
    raise ValueError(f"Cut3r: unsupported state_pe {state_pe!r} (expected '2d' or '1d')")


def estimate_intrinsics(pts3d: Tensor, conf: Tensor | None = None, min_depth: float = 1e-6) -> Tensor:
    """Pinhole intrinsics from camera-frame point maps, principal point at the image centre.

    With the OpenCV pixel convention (centre of pixel (row i, col j) at (u=j, v=i)) the principal
    point is ``c = ((W - 1) / 2, (H - 1) / 2)`` and one focal length ``f`` (square pixels) solves
    the confidence-weighted least squares ``min_f sum_p w_p |(u_p, v_p) - c - f (x_p, y_p) / z_p|^2``
    over points with ``z > min_depth``: ``f = sum w (du x/z + dv y/z) / sum w ((x/z)^2 + (y/z)^2)``.
    Closed form and differentiable.

    Args:
        pts3d: ``(..., H, W, 3)`` points in each image's own camera frame.
        conf: optional ``(..., H, W)`` weights (e.g. ``conf_self``); uniform if ``None``.

    Returns:
        ``K (..., 3, 3)`` in pixels.
    """
    H, W = pts3d.shape[-3:-1]
    z = pts3d[..., 2]
    valid = z > min_depth
    zs = torch.where(valid, z, torch.ones_like(z))
    xn, yn = pts3d[..., 0] / zs, pts3d[..., 1] / zs
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    v, u = torch.meshgrid(torch.arange(H, dtype=pts3d.dtype, device=pts3d.device),
                          torch.arange(W, dtype=pts3d.dtype, device=pts3d.device), indexing="ij")
    w = valid.to(pts3d.dtype) if conf is None else conf.to(pts3d.dtype) * valid
    num = (w * ((u - cx) * xn + (v - cy) * yn)).sum(dim=(-2, -1))
    den = (w * (xn.square() + yn.square())).sum(dim=(-2, -1)).clip(min=1e-12)
    f = num / den
    K = torch.zeros(f.shape + (3, 3), dtype=pts3d.dtype, device=pts3d.device)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = cx
    K[..., 1, 2] = cy
    K[..., 2, 2] = 1
    return K


@dataclass
class Cut3rState:
    """The recurrent state between frames.

    Attributes:
        state: ``(B, state_size, C_dec)`` state tokens (decoder width).
        state_pos: ``(B, state_size, 2)`` their positions.
        mem: ``(B, local_mem_size, 2 * C_dec)`` pose-retriever memory.
        frames: number of frames consumed so far (the first frame uses the learned pose token).
    """

    state: Tensor
    state_pos: Tensor
    mem: Tensor
    frames: int = 0


class Cut3r(CroCoEncoderMixin, Reconstructor):
    """CUT3R with the official ``ARCroco3DStereoConfig`` keyword names and defaults (see
    :data:`CUT3R_512_DPT_4_64` / :data:`CUT3R_224_LINEAR_4` for the released models).

    The encoder forward (``normalize`` to ``[-1, 1]``, ``encode_with_pos``, ``encode``,
    ``encode_prenorm``) comes from :class:`~fin3r.models.croco.CroCoEncoderMixin`.

    Only the released output mode is supported: ``output_mode='pts3d+pose'`` with
    ``pose_head=True``. Official-only arguments that do not change the inference architecture
    (``freeze``, ``patch_embed_cls``, ``landscape_only``, ...) are not taken here.
    ``dpt_layer_dims``, ``dpt_feature_dim`` and ``dpt_last_dim`` (hard-coded in the official code)
    default to the official widths; set them for tiny models.
    """

    family = "cut3r"
    patch_size = 16
    encoder_prefixes = ("patch_embed.", "enc_blocks.", "enc_norm.")
    default_lora_targets = ("enc_blocks.*.attn.qkv",)
    checkpoint_block_lists = ("enc_blocks", "dec_blocks_state", "dec_blocks")

    def __init__(self, output_mode: str = "pts3d+pose", head_type: str = "linear",
                 depth_mode: Sequence = ("exp", -inf, inf), conf_mode: Sequence = ("exp", 1, inf),
                 pose_mode: Sequence = ("exp", -inf, inf), ray_enc_depth: int = 2, state_size: int = 324,
                 local_mem_size: int = 256, state_pe: str = "2d", state_dec_num_heads: int = 16,
                 rgb_head: bool = False, pose_head: bool = True, img_size: int | Sequence[int] = (224, 224),
                 patch_size: int = 16, enc_embed_dim: int = 768, enc_depth: int = 12, enc_num_heads: int = 12,
                 dec_embed_dim: int = 512, dec_depth: int = 8, dec_num_heads: int = 16, mlp_ratio: float = 4.0,
                 pos_embed: str = "RoPE100", dpt_layer_dims: Sequence[int] = OFFICIAL_LAYER_DIMS,
                 dpt_feature_dim: int = OFFICIAL_FEATURE_DIM, dpt_last_dim: int | None = None):
        super().__init__()
        if output_mode != "pts3d+pose" or not pose_head:
            raise ValueError("Cut3r: only output_mode='pts3d+pose' with pose_head=True (the released models) "
                             f"is supported, got output_mode={output_mode!r}, pose_head={pose_head}")
        if head_type not in ("dpt", "linear"):
            raise ValueError(f"Cut3r: unsupported head_type {head_type!r} (expected 'dpt' or 'linear')")
        if patch_size != 16:
            raise ValueError(f"Cut3r: patch size 16 only, got {patch_size}")
        img_size = tuple(img_size) if isinstance(img_size, Sequence) else (int(img_size), int(img_size))
        last_dim = dpt_feature_dim // 2 if dpt_last_dim is None else dpt_last_dim
        self._config: dict[str, Any] = dict(
            output_mode=output_mode, head_type=head_type, depth_mode=list(_mode(depth_mode)),
            conf_mode=list(_mode(conf_mode)), pose_mode=list(_mode(pose_mode)), ray_enc_depth=ray_enc_depth,
            state_size=state_size, local_mem_size=local_mem_size, state_pe=state_pe,
            state_dec_num_heads=state_dec_num_heads, rgb_head=rgb_head, pose_head=pose_head,
            img_size=list(img_size), patch_size=patch_size, enc_embed_dim=enc_embed_dim, enc_depth=enc_depth,
            enc_num_heads=enc_num_heads, dec_embed_dim=dec_embed_dim, dec_depth=dec_depth,
            dec_num_heads=dec_num_heads, mlp_ratio=mlp_ratio, pos_embed=pos_embed)
        if head_type == "dpt":
            self._config.update(dpt_layer_dims=list(dpt_layer_dims), dpt_feature_dim=dpt_feature_dim,
                                dpt_last_dim=last_dim)
        self.enc_embed_dim, self.dec_embed_dim, self.dec_depth = enc_embed_dim, dec_embed_dim, dec_depth
        self.state_size, self.state_pe = state_size, state_pe
        state_positions(state_size, state_pe)  # validates state_pe
        self.head_type = head_type
        rope = RoPE2D(freq=rope_freq(pos_embed))
        self.rope = rope

        # image encoder (the part Fin3R adapts)
        self.patch_embed = PatchEmbed(patch_size, 3, enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [cut3r_encoder_block(enc_embed_dim, enc_num_heads, mlp_ratio, rope=rope) for _ in range(enc_depth)])
        self.enc_norm = LayerNorm(enc_embed_dim)
        # ray-map encoder (official: 16 heads, float32 RoPE; unused for image input)
        self.patch_embed_ray_map = PatchEmbed(patch_size, 6, enc_embed_dim)
        self.enc_blocks_ray_map = nn.ModuleList(
            [Block(enc_embed_dim, 16, 4.0, rope=rope) for _ in range(ray_enc_depth)])
        self.enc_norm_ray_map = LayerNorm(enc_embed_dim)
        self.masked_img_token = nn.Parameter(torch.randn(1, enc_embed_dim) * 0.02)
        self.masked_ray_map_token = nn.Parameter(torch.randn(1, enc_embed_dim) * 0.02)
        # image decoder
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, rope=rope) for _ in range(dec_depth)])
        self.dec_norm = LayerNorm(dec_embed_dim)
        # state and its decoder
        self.register_tokens = nn.Embedding(state_size, enc_embed_dim)
        self.decoder_embed_state = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks_state = nn.ModuleList(
            [DecoderBlock(dec_embed_dim, state_dec_num_heads, mlp_ratio, rope=rope) for _ in range(dec_depth)])
        self.dec_norm_state = LayerNorm(dec_embed_dim)
        # pose token and retriever
        self.pose_token = nn.Parameter(torch.randn(1, 1, dec_embed_dim) * 0.02)
        self.pose_retriever = LocalMemory(local_mem_size, enc_embed_dim, dec_embed_dim, dec_num_heads,
                                          mlp_ratio=mlp_ratio)
        # heads
        modes = dict(depth_mode=_mode(depth_mode), conf_mode=_mode(conf_mode), pose_mode=_mode(pose_mode))
        if head_type == "dpt":
            if dec_depth < 2:  # the head reads blocks 2L/4, 3L/4 and L of the image stream
                raise ValueError(f"Cut3r: the DPT head needs a decoder depth >= 2, got {dec_depth}")
            self.downstream_head: nn.Module = Cut3rDPTHead(
                enc_embed_dim, dec_embed_dim, dec_num_heads, rope, rgb_head=rgb_head, patch_size=patch_size,
                layer_dims=dpt_layer_dims, feature_dim=dpt_feature_dim, last_dim=last_dim, **modes)
        else:
            self.downstream_head = Cut3rLinearHead(dec_embed_dim, dec_num_heads, rope, rgb_head=rgb_head,
                                                   patch_size=patch_size, mlp_ratio=mlp_ratio, **modes)

    # --- recurrent decoding -------------------------------------------------------------------
    def init_state(self, batch: int) -> Cut3rState:
        """The initial state: ``decoder_embed_state(register_tokens)`` and the learned memory."""
        state = self.decoder_embed_state(self.register_tokens.weight)[None].expand(batch, -1, -1)
        state_pos = state_positions(self.state_size, self.state_pe).to(state.device)[None].expand(batch, -1, -1)
        return Cut3rState(state=state, state_pos=state_pos, mem=self.pose_retriever.initial_memory(batch))

    def decode(self, state: Cut3rState, feat: Tensor, pos: Tensor, pose_feat: Tensor) -> tuple[Tensor, list[Tensor]]:
        """One joint decoding pass of the state and a frame.

        Args:
            feat, pos: the frame's encoder tokens ``(B, N, C_enc)`` and positions ``(B, N, 2)``.
            pose_feat: ``(B, 1, C_dec)`` pose token (placed at position (-1, -1)).

        Returns:
            ``(new_state (B, state_size, C_dec), decout)`` with ``decout`` the ``dec_depth + 1``
            image-stream outputs ``[feat, block 1, ..., dec_norm(block L)]`` (blocks with the pose
            token first). Each layer's two blocks read the previous layer's pair.
        """
        f_state, pos_state = state.state, state.state_pos
        pose_pos = torch.full((feat.shape[0], 1, 2), -1, dtype=pos.dtype, device=pos.device)
        f_img = torch.cat([pose_feat, self.decoder_embed(feat)], dim=1)
        pos_img = torch.cat([pose_pos, pos], dim=1)
        decout = [feat]
        for blk_state, blk_img in zip(self.dec_blocks_state, self.dec_blocks):
            f_state, f_img = (run_block(blk_state, f_state, f_img, pos_state, pos_img),
                              run_block(blk_img, f_img, f_state, pos_img, pos_state))
            decout.append(f_img)
        decout[-1] = self.dec_norm(f_img)
        return self.dec_norm_state(f_state), decout

    def step(self, state: Cut3rState, feat: Tensor, pos: Tensor,
             image_size: tuple[int, int]) -> tuple[dict[str, Tensor], Cut3rState]:
        """Consume one frame's encoder tokens: ``(official output dict, next state)``."""
        global_feat = feat.mean(dim=1, keepdim=True)
        if state.frames == 0:
            pose_feat = self.pose_token.expand(feat.shape[0], -1, -1)
        else:
            pose_feat = self.pose_retriever.inquire(global_feat, state.mem)
        new_state, decout = self.decode(state, feat, pos, pose_feat)
        new_mem = self.pose_retriever.update_mem(state.mem, global_feat, decout[-1][:, 0:1])
        d = self.dec_depth
        head_input = [decout[0], decout[d * 2 // 4][:, 1:], decout[d * 3 // 4][:, 1:], decout[d]]
        with torch.autocast(device_type=feat.device.type, enabled=False):
            res = self.downstream_head([t.float() for t in head_input], image_size, pos=pos)
        return res, Cut3rState(new_state, state.state_pos, new_mem, state.frames + 1)

    def forward(self, imgs: Tensor) -> list[dict[str, Tensor]]:
        """The official sequential forward on ``imgs (B, S, 3, H, W)`` in [0, 1] from the initial state.

        Returns one official output dict per frame (module docstring of
        :mod:`fin3r.models.cut3r.heads`), with ``pts3d_in_other_view`` in frame 0's camera.
        """
        self.check_images(imgs, ndim=5)
        B, S = imgs.shape[:2]
        # all frames through the encoder at once, frame-major as the official code
        feat, pos = self.encode_with_pos(imgs.transpose(0, 1).reshape(S * B, *imgs.shape[2:]))
        state = self.init_state(B)
        results = []
        for s in range(S):
            res, state = self.step(state, feat[s * B:(s + 1) * B], pos[s * B:(s + 1) * B], tuple(imgs.shape[-2:]))
            results.append(res)
        return results

    # --- the Reconstructor interface ----------------------------------------------------------
    def predict_mono(self, img: Tensor) -> MonoPrediction:
        """One frame from the initial state: ``depth`` = z of ``pts3d_in_self_view``, ``conf`` =
        ``conf_self``; ``depth_aux``/``conf_aux`` = z and ``conf`` of the cross head, which for the
        first frame is expressed in the same camera."""
        self.check_images(img)
        res = self(img[:, None])[0]
        return MonoPrediction(depth=res["pts3d_in_self_view"][..., 2], conf=res["conf_self"],
                              pts3d=res["pts3d_in_self_view"], depth_aux=[res["pts3d_in_other_view"][..., 2]],
                              conf_aux=[res["conf"]])

    def predict_views(self, imgs: Tensor) -> ViewsPrediction:
        """``imgs (B, S, 3, H, W)`` processed in order with the recurrent state.

        ``pts3d``/``conf``: ``pts3d_in_other_view``/``conf`` (frame 0's camera); ``cam2world`` from
        ``camera_pose``; ``intrinsics`` estimated from the self-view points
        (:func:`estimate_intrinsics`, ``conf_self`` weights); ``depth``/``depth_conf``: z of
        ``pts3d_in_self_view`` and ``conf_self``. ``extras``: ``pts3d_self (B, S, H, W, 3)``,
        ``conf_self``, ``camera_pose (B, S, 7)`` and ``rgb (B, S, H, W, 3)`` (if the model has it).
        """
        ress = self(imgs)

        def stack(key: str) -> Tensor:
            return torch.stack([r[key] for r in ress], dim=1)

        pts3d_self, conf_self, camera_pose = stack("pts3d_in_self_view"), stack("conf_self"), stack("camera_pose")
        extras = {"pts3d_self": pts3d_self, "conf_self": conf_self, "camera_pose": camera_pose}
        if "rgb" in ress[0]:
            extras["rgb"] = stack("rgb")
        return ViewsPrediction(
            pts3d=stack("pts3d_in_other_view"), conf=stack("conf"), cam2world=camera_pose_to_cam2world(camera_pose),
            intrinsics=estimate_intrinsics(pts3d_self, conf_self), depth=pts3d_self[..., 2], depth_conf=conf_self,
            extras=extras)

    # --- checkpoints --------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"family": self.family, **self._config}

    def official_state_dict(self) -> dict[str, Tensor]:
        """Our state_dict plus the official alias keys ``downstream_head.dpt_*.scratch.layer_rn.{0..3}``
        (same tensors), exactly the keys of an official ``.pth``."""
        sd = dict(self.state_dict())
        if self.head_type == "dpt":
            for name in _DPT_NAMES:
                for i in range(4):
                    key = f"downstream_head.{name}.scratch.layer{i + 1}_rn.weight"
                    if key in sd:
                        sd[f"downstream_head.{name}.scratch.layer_rn.{i}.weight"] = sd[key]
        return sd


#: the released final model (``cut3r_512_dpt_4_64.pth``), as its ``args.model`` string
CUT3R_512_DPT_4_64: dict[str, Any] = dict(
    state_size=768, state_pe="2d", pos_embed="RoPE100", rgb_head=True, pose_head=True, img_size=[512, 512],
    head_type="dpt", output_mode="pts3d+pose", depth_mode=["exp", -inf, inf], conf_mode=["exp", 1, inf],
    pose_mode=["exp", -inf, inf], enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768,
    dec_depth=12, dec_num_heads=12)
#: the released intermediate 224 model (``cut3r_224_linear_4.pth``)
CUT3R_224_LINEAR_4: dict[str, Any] = {**CUT3R_512_DPT_4_64, "img_size": [224, 224], "head_type": "linear"}
#: tiny random configs: the golden fixtures' architectures (``tests/fixtures/cut3r_*_tiny_*``)
CUT3R_TINY: dict[str, Any] = dict(
    state_size=12, state_pe="2d", pos_embed="RoPE100", rgb_head=True, pose_head=True, img_size=[32, 32],
    head_type="dpt", output_mode="pts3d+pose", depth_mode=["exp", -inf, inf], conf_mode=["exp", 1, inf],
    pose_mode=["exp", -inf, inf], enc_embed_dim=16, enc_depth=2, enc_num_heads=2, dec_embed_dim=12, dec_depth=10,
    dec_num_heads=3, ray_enc_depth=0, local_mem_size=4, state_dec_num_heads=1, dpt_layer_dims=[4, 8, 8, 16],
    dpt_feature_dim=8, dpt_last_dim=8)
CUT3R_TINY_LINEAR: dict[str, Any] = dict(
    state_size=12, state_pe="2d", pos_embed="RoPE100", rgb_head=True, pose_head=True, img_size=[32, 32],
    head_type="linear", output_mode="pts3d+pose", depth_mode=["exp", -inf, inf], conf_mode=["exp", 1, inf],
    pose_mode=["exp", -inf, inf], enc_embed_dim=16, enc_depth=2, enc_num_heads=2, dec_embed_dim=8, dec_depth=4,
    dec_num_heads=1, ray_enc_depth=0, local_mem_size=4, state_dec_num_heads=2)

#: known configurations by registry name (``fin3r.models.registry.MODEL_CONFIGS`` adds ``family``)
CUT3R_CONFIGS: dict[str, dict[str, Any]] = {
    "cut3r_512_dpt_4_64": CUT3R_512_DPT_4_64,
    "cut3r_224_linear_4": CUT3R_224_LINEAR_4,
    "cut3r_tiny": CUT3R_TINY,
    "cut3r_tiny_linear": CUT3R_TINY_LINEAR,
}

__all__ = ["Cut3r", "Cut3rState", "estimate_intrinsics", "state_positions", "CUT3R_CONFIGS", "CUT3R_512_DPT_4_64",
           "CUT3R_224_LINEAR_4", "CUT3R_TINY", "CUT3R_TINY_LINEAR"]
