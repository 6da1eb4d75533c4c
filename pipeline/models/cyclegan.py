"""The generators of `junyanz/pytorch-CycleGAN-and-pix2pix` (models/networks.py), with the official key layout.

Images in [−1, 1] (``(x / 255 − 0.5) / 0.5``): input (N, input_nc, H, W) -> output (N, output_nc, H, W), ending
in Tanh. ``ResnetGenerator`` keys: ``model.N.{weight,bias}`` and ``model.B.conv_block.{1,5}.{weight,bias}``;
``UnetGenerator`` keys: ``model.model.0``, ``model.model.1.model.1``, … (nested skip blocks).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """'instance' (affine=False, per-sample statistics), 'batch' (affine, running stats) or 'none'."""
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm '{norm}' (expected instance, batch or none)")


class ResnetBlock(nn.Module):
    """x + [pad, conv3×3, norm, ReLU, (dropout), pad, conv3×3, norm](x) with reflection padding."""

    def __init__(self, dim: int, norm: Callable[[int], nn.Module], use_dropout: bool, use_bias: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim), nn.ReLU()]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual blocks, two ×2 conv-transposes, c7s1-output, Tanh.

    Height and width must be multiples of 4 for the output to have the input's size.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", use_dropout: bool = False):
        super().__init__()
        norm_layer = norm_factory(norm)
        use_bias = norm != "batch"  # the official code gives convs a bias unless a BatchNorm follows
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias),
                                   norm_layer(ngf), nn.ReLU()]
        for i in range(2):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=use_bias), norm_layer(2 * c), nn.ReLU()]
        layers += [ResnetBlock(ngf * 4, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=use_bias),
                       norm_layer(c // 2), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One level of the U-Net: down (LeakyReLU 0.2, conv4×4/2, norm) → inner block → up (ReLU, convT4×4/2, norm).

    Non-outermost levels return ``cat([leaky_relu(x), up(down(x))])``: the official code applies its LeakyReLU in
    place, so the skip branch carries the activated input; this is written out here without in-place operations.
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 norm: str = "batch", use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        norm_layer = norm_factory(norm)
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        if outermost:
            layers = [downconv, submodule, nn.ReLU(),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2), downconv, nn.ReLU(),
                      nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias),
                      norm_layer(outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2), downconv, norm_layer(inner_nc), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(2 * inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias),
                      norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        x = self.model[0](x)
        y = x
        for layer in list(self.model)[1:]:
            y = layer(y)
        return torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """A U-Net with ``num_downs`` stride-2 levels (inputs of 2**num_downs multiples); pix2pix's unet_256 has 8."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", use_dropout: bool = False):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5, got {num_downs}")
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
