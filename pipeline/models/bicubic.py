"""Exact bicubic upscaling as a module without weights (torch's kernel: a = −0.75, align_corners=False).

Input (N, C, H, W) -> output (N, C, sH, sW), any value range; border samples are clamped (replicated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bicubic(nn.Module):
    """``F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)``."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
