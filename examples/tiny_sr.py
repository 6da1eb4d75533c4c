"""TinySR: a small super-resolution network of the kind one writes oneself, in one file.

A head convolution, residual blocks of our own (conv → LeakyReLU → conv, plus the block's input), a tail
convolution to scale² × 3 channels, a pixel shuffle, and a global skip: the bilinear upscaling of the input is
added to the output, so the network only learns the detail that bilinear interpolation misses. RGB in [0, 1].

linterp uses it through the factory ``make``:

    linterp compute --model examples/tiny_sr.py:make --weights tiny_sr.pt --out tiny_sr.zarr
    linterp compute --model examples/tiny_sr.py:make --model-arg features=16 ...   # keyword options of make()

``examples/train_tiny_sr.py`` trains it for a minute and looks inside it.
"""
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """x + conv(LeakyReLU(conv(x))), 3×3 convolutions that keep the number of features."""

    def __init__(self, features: int, slope: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.act = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class TinySR(nn.Module):
    """×``scale`` super-resolution of RGB images in [0, 1]: (1, 3, H, W) -> (1, 3, scale·H, scale·W)."""

    def __init__(self, scale: int = 2, features: int = 32, blocks: int = 3):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)])
        self.tail = nn.Conv2d(features, 3 * scale ** 2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.tail.weight)  # untrained, the network is the bilinear skip alone
        nn.init.zeros_(self.tail.bias)

    def forward(self, x):
        detail = self.shuffle(self.tail(self.body(self.head(x))))
        return detail + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def make(scale: int = 2, features: int = 32, blocks: int = 3) -> TinySR:
    """The factory linterp calls: ``--model examples/tiny_sr.py:make [--model-arg scale=4 …]``."""
    return TinySR(scale, features, blocks)
