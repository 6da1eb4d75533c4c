"""EDSR (Lim et al. 2017) with the official module tree and state-dict keys of `sanghyun-son/EDSR-PyTorch`.

RGB in 0..rgb_range (255): input (N, 3, H, W) -> output (N, 3, sH, sW). Keys: ``sub_mean``, ``head.0``,
``body.{0..n-1}.body.{0,2}``, ``body.n``, ``tail.0.{k}`` (upsampler convs), ``tail.1``, ``add_mean``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

#: DIV2K RGB mean used by the official MeanShift layers (fractions of rgb_range).
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """The official ``default_conv`` with kernel 3: same padding, with bias."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class MeanShift(nn.Conv2d):
    """A frozen 1×1 convolution adding ``sign · rgb_range · mean / std`` per channel (weights 1/std on the diagonal)."""

    def __init__(self, rgb_range: float, rgb_mean=DIV2K_RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean) / std)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """conv → ReLU → conv, scaled by ``res_scale`` and added to the input. ``relu`` is shared between blocks."""

    def __init__(self, n_feats: int, relu: nn.Module, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats), relu, conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """[conv(n→4n), PixelShuffle(2)] × log2(scale) for powers of two, or [conv(n→9n), PixelShuffle(3)] for 3."""

    def __init__(self, scale: int, n_feats: int):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv3x3(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv3x3(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"EDSR supports scales 2^n and 3, not {scale}")
        super().__init__(*layers)


class EDSR(nn.Module):
    """sub_mean → head → body (+ global skip) → tail (upsampler, conv) → add_mean."""

    def __init__(self, scale: int = 4, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 rgb_range: float = 255, n_colors: int = 3):
        super().__init__()
        self.scale = scale
        relu = nn.ReLU()  # one object, used by every ResBlock as in the official code
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(conv3x3(n_colors, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats, relu, res_scale) for _ in range(n_resblocks)],
                                  conv3x3(n_feats, n_feats))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv3x3(n_feats, n_colors))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = x + self.body(x)
        return self.add_mean(self.tail(x))
