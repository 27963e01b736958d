"""The CroCo two-view trunk shared by DUSt3R and MASt3R: a ViT encoder with RoPE2D and two
cross-attending decoders (one per view).

State-dict keys are the official ones: ``patch_embed.*``, ``enc_blocks.*``, ``enc_norm.*`` (the
encoder Fin3R adapts), ``decoder_embed.*``, ``dec_blocks.*`` (view 1), ``dec_blocks2.*`` (view 2),
``dec_norm.*``. The unused CroCo pre-training ``mask_token`` is not a parameter here; the
official-format export writes it back as zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fin3r.models.base import Reconstructor
from fin3r.models.layers.blocks import Block, DecoderBlock, LayerNorm
from fin3r.models.layers.checkpointing import run_block
from fin3r.models.layers.patch_embed import PatchEmbed
from fin3r.models.layers.rope2d import RoPE2D


def rope_freq(pos_embed: str) -> float:
    """``'RoPE100' -> 100.0``; the CroCo family's other option (cosine) is not supported."""
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"only RoPE position embeddings are supported (e.g. 'RoPE100'), got {pos_embed!r}")
    return float(pos_embed[len("RoPE"):])


class CroCoEncoderMixin:
    """The CroCo image encoder's forward (``patch_embed`` -> ``enc_blocks`` -> ``enc_norm``) and the
    ``encode``/``encode_prenorm`` interface, for any :class:`Reconstructor` that has those three
    modules (DUSt3R, MASt3R, CUT3R)."""

    @staticmethod
    def normalize(img: Tensor) -> Tensor:
        """``[0, 1] -> [-1, 1]``, as the official ``Normalize(0.5, 0.5)``."""
        return (img - 0.5) / 0.5

    def encode_with_pos(self, img: Tensor, prenorm: bool = False) -> tuple[Tensor, Tensor]:
        """``img (B, 3, H, W)`` in [0, 1] -> ``(tokens (B, N, C_enc), pos (B, N, 2))``."""
        x, pos = self.patch_embed(self.normalize(img))
        for blk in self.enc_blocks:
            x = run_block(blk, x, pos)
        return (x if prenorm else self.enc_norm(x)), pos

    def encode(self, img: Tensor) -> Tensor:
        self.check_images(img)
        return self.encode_with_pos(img)[0]

    def encode_prenorm(self, img: Tensor) -> Tensor:
        self.check_images(img)
        return self.encode_with_pos(img, prenorm=True)[0]


class CroCoStereo(CroCoEncoderMixin, Reconstructor):
    """Encoder + two decoders. Images enter in ``[0, 1]`` and are mapped to ``[-1, 1]`` inside.

    The decoder output of each view is the official ``decout`` list of ``dec_depth + 1`` token
    tensors: ``[encoder output, decoder block 1, ..., dec_norm(decoder block L)]``.
    """

    encoder_prefixes = ("patch_embed.", "enc_blocks.", "enc_norm.")
    default_lora_targets = ("enc_blocks.*.attn.qkv",)
    checkpoint_block_lists = ("enc_blocks", "dec_blocks", "dec_blocks2")

    def __init__(self, enc_embed_dim: int = 1024, enc_depth: int = 24, enc_num_heads: int = 16,
                 dec_embed_dim: int = 768, dec_depth: int = 12, dec_num_heads: int = 12, mlp_ratio: float = 4.0,
                 patch_size: int = 16, norm_im2_in_dec: bool = True, pos_embed: str = "RoPE100"):
        super().__init__()
        self.patch_size = patch_size
        self.enc_embed_dim = enc_embed_dim
        self.dec_embed_dim = dec_embed_dim
        self.dec_depth = dec_depth
        self.rope = RoPE2D(freq=rope_freq(pos_embed))
        self.patch_embed = PatchEmbed(patch_size, 3, enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(enc_embed_dim, enc_num_heads, mlp_ratio, rope=self.rope) for _ in range(enc_depth)])
        self.enc_norm = LayerNorm(enc_embed_dim)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList([
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_mem=norm_im2_in_dec, rope=self.rope)
            for _ in range(dec_depth)])
        self.dec_blocks2 = nn.ModuleList([
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_mem=norm_im2_in_dec, rope=self.rope)
            for _ in range(dec_depth)])
        self.dec_norm = LayerNorm(dec_embed_dim)

    # --- decoder ------------------------------------------------------------------------------
    def decode(self, feat1: Tensor, pos1: Tensor, feat2: Tensor, pos2: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Both decoders; each step reads the previous step's pair. Returns the two ``decout`` lists."""
        out1, out2 = [feat1], [feat2]
        f1, f2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = run_block(blk1, f1, f2, pos1, pos2), run_block(blk2, f2, f1, pos2, pos1)
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def encode_pair(self, img1: Tensor, img2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encode two views (one batched pass when their sizes agree): ``feat1, pos1, feat2, pos2``."""
        if img1.shape == img2.shape:
            feat, pos = self.encode_with_pos(torch.cat((img1, img2), dim=0))
            feat1, feat2 = feat.chunk(2, dim=0)
            pos1, pos2 = pos.chunk(2, dim=0)
            return feat1, pos1, feat2, pos2
        feat1, pos1 = self.encode_with_pos(img1)
        feat2, pos2 = self.encode_with_pos(img2)
        return feat1, pos1, feat2, pos2


__all__ = ["CroCoEncoderMixin", "CroCoStereo", "rope_freq"]
