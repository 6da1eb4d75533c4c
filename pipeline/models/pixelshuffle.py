"""The sub-pixel super-resolution net of the PyTorch example (`pytorch/examples/super_resolution`).

Works on the Y channel of JFIF YCbCr, values in [0, 1]: input (N, 1, H, W) -> output (N, 1, rH, rW).
State-dict keys are the official ones: ``conv1..conv4.{weight,bias}``.
"""
from __future__ import annotations

import torch
from torch import nn


class PixelShuffleNet(nn.Module):
    """Four convolutions, one shared ReLU (called three times) and a PixelShuffle by ``upscale_factor``."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        r = int(upscale_factor)
        self.upscale_factor = r
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv4 = nn.Conv2d(32, r * r, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The example's initialisation: orthogonal weights, gain √2 before a ReLU and 1 for ``conv4``."""
        relu_gain = nn.init.calculate_gain("relu")
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.orthogonal_(conv.weight, relu_gain)
        nn.init.orthogonal_(self.conv4.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.pixel_shuffle(self.conv4(x))
