"""torchvision ImageNet classifiers of the paper's Table 1, with the ImageNet normalisation inside the model.

Input (N, 3, H, W) RGB in [0, 1] -> logits (N, 1000). The torchvision network is the ``net`` attribute, so
official state dicts load into ``model.net`` unchanged.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision builder name -> (official weight file name, recommended input side, smallest input side that runs).
#: Files live under https://download.pytorch.org/models/; the ResNet-50/101/152 files are IMAGENET1K_V1, the
#: weights the paper's Table 1 (made with ``pretrained=True``) used.
CLASSIFIERS = {
    "alexnet": ("alexnet-owt-7be5be79.pth", 224, 63),
    "squeezenet1_0": ("squeezenet1_0-b66bff10.pth", 224, 21),
    "squeezenet1_1": ("squeezenet1_1-b8a52dc0.pth", 224, 17),
    "vgg11": ("vgg11-8a719046.pth", 224, 32),
    "vgg13": ("vgg13-19584684.pth", 224, 32),
    "vgg16": ("vgg16-397923af.pth", 224, 32),
    "vgg19": ("vgg19-dcbb9e9d.pth", 224, 32),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 224, 32),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 224, 32),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 224, 32),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 224, 32),
    "resnet18": ("resnet18-f37072fd.pth", 224, 8),
    "resnet34": ("resnet34-b627a593.pth", 224, 8),
    "resnet50": ("resnet50-0676ba61.pth", 224, 8),
    "resnet101": ("resnet101-63fe2227.pth", 224, 8),
    "resnet152": ("resnet152-394f9c45.pth", 224, 8),
    "densenet121": ("densenet121-a639ec97.pth", 224, 29),
    "densenet161": ("densenet161-8d451a50.pth", 224, 29),
    "densenet169": ("densenet169-b2777c0a.pth", 224, 29),
    "densenet201": ("densenet201-c1103571.pth", 224, 29),
    "inception_v3": ("inception_v3_google-0cc3c7bd.pth", 299, 75),
}


class ImageNetClassifier(nn.Module):
    """``net((x − mean) / std)`` for x in [0, 1]; mean and std are non-persistent buffers (not in the state dict)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def torchvision_classifier(name: str) -> ImageNetClassifier:
    """The torchvision network ``name`` at its own random initialisation, wrapped; load official weights into ``.net``.

    Inception v3 is built as its pretrained builder builds it (``transform_input=True``, with the auxiliary
    classifier, which runs only in training mode), so that the official file loads strictly and behaves as upstream.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown torchvision classifier '{name}'")
    builder = getattr(torchvision.models, name)
    kwargs = {"aux_logits": True, "transform_input": True, "init_weights": True} if name == "inception_v3" else {}
    return ImageNetClassifier(builder(weights=None, **kwargs))
