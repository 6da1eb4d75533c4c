"""Small VGG-style classifiers for scikit-learn's digits upsampled to 32×32.

Input (N, 1, 32, 32) in [0, 1] -> logits (N, 10). Keys: ``features.N``, ``classifier.N`` as in torchvision's VGG.
"""
from __future__ import annotations

import torch
from torch import nn

#: Output channels of the 3×3 convolutions; 'M' is a 2×2 max pooling.
FEATURES_CFG = (16, "M", 32, "M", 64, 64, "M")


def make_features(batch_norm: bool, in_channels: int = 1) -> nn.Sequential:
    """conv 3×3 (padding 1) → (BatchNorm) → ReLU per number in ``FEATURES_CFG``, MaxPool2d(2) per 'M'."""
    layers: list[nn.Module] = []
    for item in FEATURES_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(in_channels, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU())
        in_channels = item
    return nn.Sequential(*layers)


class DigitsVGG(nn.Module):
    """features → flatten → Linear(1024, 128) → ReLU → Dropout(0.5) → Linear(128, 10)."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        self.features = make_features(batch_norm)
        self.classifier = nn.Sequential(nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
