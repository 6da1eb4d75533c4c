"""The linear interpreter of a CycleGAN ResNet generator as a differentiable function of its weights, for training.

``interpreted_response(model, x, v)`` returns (f(x), F(x)·v) for a batch: F(x) is the interpreter that
``pipeline.interpreter.interpret`` builds at each image of x (ReLU: its 0/1 mask; instance norm: x's statistics
frozen, so its linear part is the gain 1/σ; Tanh: the secant gain tanh(y)/y; convolutions without their
biases), written out layer by layer so that gradients reach the weights (the interpreter itself records under
``no_grad``). ``tests/test_training.py`` checks it against the interpreter.

Used by ``tasks.Translation(flat_weight=…)``: a penalty on the columns of pixels in flat areas of the target, so that
a stand-in such as ``i2i-label`` ignores its input where its output is one flat colour, as the paper's
Photo2Label generator does (appendix, section C).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.cyclegan import ResnetBlock, ResnetGenerator


def _secant(y: torch.Tensor) -> torch.Tensor:
    """tanh(y)/y, with its limit 1 at y = 0."""
    small = y.abs() < 1e-6
    return torch.where(small, torch.ones_like(y), torch.tanh(y) / torch.where(small, torch.ones_like(y), y))


def _layers(layers, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for m in layers:
        if isinstance(m, ResnetBlock):
            y, w = _layers(m.conv_block, x, v)
            x, v = x + y, v + w
        elif isinstance(m, nn.Conv2d) and m.padding_mode == "zeros":
            x, v = m(x), F.conv2d(v, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.ConvTranspose2d):
            x, v = m(x), F.conv_transpose2d(v, m.weight, None, m.stride, m.padding, m.output_padding, m.groups,
                                            m.dilation)
        elif isinstance(m, nn.InstanceNorm2d) and not m.affine and not m.track_running_stats:
            gain = torch.rsqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + m.eps)
            x, v = m(x), v * gain
        elif isinstance(m, nn.ReLU):
            x, v = m(x), v * (x > 0)
        elif isinstance(m, nn.Tanh):
            x, v = torch.tanh(x), v * _secant(x)
        elif isinstance(m, (nn.ReflectionPad2d, nn.Identity)):
            x, v = m(x), m(v)
        else:
            raise TypeError(f"interpreted_response: no rule for {type(m).__name__} in a ResnetGenerator")
    return x, v


def interpreted_response(model: ResnetGenerator, x: torch.Tensor, v: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), F(x)·v) for batches x, v of shape (N, C_in, H, W); both (N, C_out, H, W), differentiable in the
    weights. Dropout layers are not supported (the stand-ins have none)."""
    if not isinstance(model, ResnetGenerator):
        raise TypeError(f"interpreted_response needs a ResnetGenerator, not {type(model).__name__}")
    return _layers(model.model, x, v)
