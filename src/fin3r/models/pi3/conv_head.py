"""Pi3X's convolutional dense head (MoGe-style): patch tokens -> full-resolution maps.

Keys (official): ``upsample_blocks.{i}.0.{0,1}`` (a 2x2 stride-2 transposed convolution and a 3x3
convolution), ``upsample_blocks.{i}.{1..}.layers.{0,2,3,5}`` (residual blocks: GroupNorm(1),
ReLU, 3x3 conv, GroupNorm(hidden / 32), ReLU, 3x3 conv; identity skip) and
``output_block.{j}.{0,2}`` (3x3 conv, ReLU, 1x1 conv, one block per output). All 3x3 convolutions
pad by replication. Before every upsampling stage and before the output blocks, two channels of
normalised view-plane UV coordinates are appended; after the last stage the features are resized
bilinearly to the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def view_plane_uv(width: int, height: int, aspect_ratio: float, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """``(height, width, 2)`` UV of pixel centres on a view plane whose diagonal spans 2: the
    corners at ``±(a, 1) / sqrt(1 + a^2) * (n - 1) / n`` for aspect ratio ``a`` (width / height)."""
    span_x = aspect_ratio / (1 + aspect_ratio**2) ** 0.5
    span_y = 1 / (1 + aspect_ratio**2) ** 0.5
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                       device=device)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack((uu, vv), dim=-1)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, padding_mode="replicate")


class ResidualConvBlock(nn.Module):
    """``x + layers(x)`` on ``(N, C, h, w)``, ``layers`` = GN(1), ReLU, conv, GN(hidden/32), ReLU, conv."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        if hidden < 32:
            raise ValueError(f"the residual block's hidden width must be >= 32 (GroupNorm of width / 32), got {hidden}")
        self.layers = nn.Sequential(
            nn.GroupNorm(1, channels), nn.ReLU(), _conv3x3(channels, hidden),
            nn.GroupNorm(hidden // 32, hidden), nn.ReLU(), _conv3x3(hidden, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class ConvHead(nn.Module):
    """``(tokens (N, h*w, C), (h, w)) -> [map (N, c_j, 14h, 14w) for each output j]``.

    Args:
        dim_in: token width.
        dim_out: channels of each output block (``[2, 1]``: xy and log-depth; ``[1]``: confidence).
        dims: widths of the upsampling stages (``[256, 128, 64]``: 8x before the final resize).
        res_blocks: residual blocks per stage (2); their hidden width is twice the stage's.
        last_channels: width of the output blocks' first convolution (32).
        patch_size: image pixels per token (14).
    """

    def __init__(self, dim_in: int, dim_out: list[int] | tuple[int, ...], dims: list[int] | tuple[int, ...] = (256, 128, 64),
                 res_blocks: int = 2, last_channels: int = 32, patch_size: int = 14):
        super().__init__()
        self.patch_size = patch_size
        self.upsample_blocks = nn.ModuleList()
        for cin, cout in zip([dim_in, *dims[:-1]], dims):
            upsampler = nn.Sequential(nn.ConvTranspose2d(cin + 2, cout, kernel_size=2, stride=2), _conv3x3(cout, cout))
            self.upsample_blocks.append(
                nn.Sequential(upsampler, *(ResidualConvBlock(cout, 2 * cout) for _ in range(res_blocks))))
        self.output_block = nn.ModuleList(
            nn.Sequential(_conv3x3(dims[-1] + 2, last_channels), nn.ReLU(),
                          nn.Conv2d(last_channels, c, kernel_size=1))
            for c in dim_out
        )

    @staticmethod
    def _with_uv(x: Tensor, aspect_ratio: float) -> Tensor:
        uv = view_plane_uv(x.shape[-1], x.shape[-2], aspect_ratio, x.dtype, x.device)
        return torch.cat((x, uv.permute(2, 0, 1).expand(x.shape[0], -1, -1, -1)), dim=1)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> list[Tensor]:
        h, w = grid
        H, W = h * self.patch_size, w * self.patch_size
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        for block in self.upsample_blocks:
            x = block(self._with_uv(x, W / H))
        x = self._with_uv(F.interpolate(x, (H, W), mode="bilinear", align_corners=False), W / H)
        return [block(x) for block in self.output_block]


__all__ = ["ConvHead", "ResidualConvBlock", "view_plane_uv"]
