"""Convolutions of perturbations that are zero outside a small box: computed on the box only.

A column of F starts as a one-hot input and spreads by a few pixels per layer, so through the first layers of a
deep network most of every feature map is exactly zero. ``conv2d_on_support`` finds the box that holds every
non-zero of the batch (over batch and channels), convolves only the input rows and columns that output box
needs (zeros beyond the map's edge stand for the convolution's zero padding, true zeros everywhere else), and
places the result in an otherwise zero output. Every output value is the same sum of the same products as the
full convolution's, and the ones left out are sums of exact zeros: the result is exact, not an approximation.
For edsr-small-x4's columns on their 44×44 windows the body's 18 convolutions then work on a cone that grows from
the input pixel instead of the whole window: a column pass takes 0.82–0.85× the time (docs/performance.md).
Perturbations that are dense (SVD, verification) pay one pass over the input per convolution to find that out.
Used on the CPU only (``rules.ConvModule``): finding the box needs its indices on the host, a synchronisation per
layer on a GPU, where the gain has not been measured.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Output boxes larger than this fraction of the output map are convolved whole (cropping would save little).
MAX_FRACTION = 0.6
#: Convolutions with fewer multiply-adds per input value (C_out·kh·kw / groups) are convolved whole: finding the
#: box (one pass over the input) would cost about as much as it saves (edsr's last layer, 32 -> 3 channels).
MIN_WORK = 64
#: Output boxes are widened to multiples of this many pixels (the extra outputs are computed, not assumed zero):
#: fewer distinct shapes, so oneDNN reuses its compiled kernels. Measured on the full face's tile rows 0 and 5
#: (one thread, one run): whole convolutions 1, exact boxes 0.939 (the edge row slower than whole), boxes in steps
#: of 8 pixels 0.920 (both rows faster than whole).
SPAN_STEP = 8


def _extent(mask: torch.Tensor) -> tuple[int, int] | None:
    """First and last index where a 1-D boolean tensor is True, or None."""
    where = torch.nonzero(mask).flatten()
    return None if where.numel() == 0 else (int(where[0]), int(where[-1]))


def _output_span(lo: int, hi: int, size_out: int, kernel: int, stride: int, padding: int,
                 dilation: int) -> tuple[int, int]:
    """Output indices [i0, i1] whose receptive field meets input indices [lo, hi], widened to multiples of
    ``SPAN_STEP`` and clipped to the map: out[i] reads in[stride·i − padding + dilation·j], j = 0 … kernel − 1."""
    i0 = max(0, -(-(lo + padding - dilation * (kernel - 1)) // stride))
    i1 = min(size_out - 1, (hi + padding) // stride)
    return i0 // SPAN_STEP * SPAN_STEP, min(size_out - 1, (i1 // SPAN_STEP + 1) * SPAN_STEP - 1)


def conv2d_on_support(v: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                      dilation: tuple[int, int], groups: int) -> torch.Tensor:
    """``F.conv2d(v, weight, None, stride, padding, dilation, groups)`` (zero padding) for v (B, C, H, W),
    computed on the box of v's non-zeros. Returns (B, C_out, H_out, W_out) in v's memory format."""
    _, _, h, w = v.shape
    kh, kw = weight.shape[-2:]
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if weight.shape[0] * kh * kw // groups < MIN_WORK:
        return F.conv2d(v, weight, None, stride, padding, dilation, groups)
    nonzero = v.abs().amax(dim=(0, 1)) != 0  # (H, W); NaN counts as non-zero
    rows, cols = _extent(nonzero.any(dim=1)), _extent(nonzero.any(dim=0))
    i0, i1 = _output_span(*rows, h_out, kh, stride[0], padding[0], dilation[0]) if rows else (0, -1)
    j0, j1 = _output_span(*cols, w_out, kw, stride[1], padding[1], dilation[1]) if cols else (0, -1)
    if max(0, i1 - i0 + 1) * max(0, j1 - j0 + 1) > MAX_FRACTION * h_out * w_out:
        return F.conv2d(v, weight, None, stride, padding, dilation, groups)
    layout = torch.channels_last if v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() \
        else torch.contiguous_format
    out = torch.empty((v.shape[0], weight.shape[0], h_out, w_out), dtype=v.dtype, device=v.device,
                      memory_format=layout).zero_()
    if i1 < i0 or j1 < j0:  # no non-zero input, or none that any output reads
        return out
    # input rows [r0, r1] and columns [c0, c1] that outputs [i0, i1] × [j0, j1] read; outside the map: padding
    r0, r1 = stride[0] * i0 - padding[0], stride[0] * i1 - padding[0] + dilation[0] * (kh - 1)
    c0, c1 = stride[1] * j0 - padding[1], stride[1] * j1 - padding[1] + dilation[1] * (kw - 1)
    piece = v[..., max(r0, 0):min(r1, h - 1) + 1, max(c0, 0):min(c1, w - 1) + 1]
    pads = (max(0, -c0), max(0, c1 - (w - 1)), max(0, -r0), max(0, r1 - (h - 1)))
    if any(pads):
        piece = F.pad(piece, pads)
    out[..., i0:i1 + 1, j0:j1 + 1] = F.conv2d(piece, weight, None, stride, 0, dilation, groups)
    return out
