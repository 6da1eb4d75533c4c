"""A receptive radius that can be trusted for any model: every column's true reach (measured on the dense F) lies
within the radius, and windowed columns equal whole-image columns, for models whose gating varies across the
image, differences of terms, strides, circular padding and indices frozen at x0 (None: whole image)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.compute import tile_columns
from pipeline.interpreter import interpret
from pipeline.interpreter.window import probe_pixels


class SpatialGate(nn.Module):
    """`h * (h.mean(1, keepdim=True) > t)`: the gate is shut at the image centre for the x0 used below."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 5, padding=2)
        self.c = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        g = h * (x.mean(1, keepdim=True) > 0.5)
        return self.c(torch.relu(self.b(g)))


class Difference(nn.Module):
    """`relu(h) - relu(-h)` (= h): a difference of two terms with one support."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 3, 5, padding=2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.relu(h) - torch.relu(-h))


class WhereGate(nn.Module):
    """`torch.where` on a comparison: a long branch where x0 is bright, a short one elsewhere."""

    def __init__(self):
        super().__init__()
        self.long = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 3, 5, padding=2))
        self.short = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.where(x > 0.5, self.long(x), self.short(x))


class Strided(nn.Module):
    """Stride-2 convolution, a max-pool and ×4 nearest upsampling: phases of a total stride of 4."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=4)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.up(torch.relu(self.mid(self.pool(self.down(x))))))


class Circular(nn.Module):
    """Circular padding: pixels at one edge reach the opposite edge."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
        self.b = nn.Conv2d(4, 3, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class FrozenIndex(nn.Module):
    """Columns permuted by an argsort of x0: a structure the support pass cannot open."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        order = x.mean((1, 2)).argsort(dim=-1)[0]  # (W,) indices frozen at x0
        return self.a(x)[..., order]


class AlignCorners(nn.Module):
    """Bilinear ×2 with align_corners=True: the sampling grid depends on the map's size, so cropping changes it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        up = nn.functional.interpolate(torch.relu(self.a(x)), scale_factor=2, mode="bilinear", align_corners=True)
        return self.b(up)


class FixedSize(nn.Module):
    """Interpolation to a fixed size: windows would change the output size."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.b(nn.functional.interpolate(torch.relu(self.a(x)), size=(64, 64), mode="bilinear"))


def _x0(n: int = 32) -> torch.Tensor:
    """Bright (1) everywhere except a dark centre square: gates shut around the centre, open elsewhere."""
    torch.manual_seed(0)
    x = 0.6 + 0.4 * torch.rand(1, 3, n, n)
    x[..., n // 2 - 6:n // 2 + 6, n // 2 - 6:n // 2 + 6] = 0.2 * torch.rand(1, 3, 12, 12)
    return x


def dense_columns(li) -> np.ndarray:
    """All columns of F: (C_in, H, W, C_out, H_out, W_out)."""
    x0 = li.x0
    n = x0[0].numel()
    eye = torch.eye(n).reshape(n, *x0.shape[1:])
    cols = torch.cat([li.forward(eye[i:i + 256]) for i in range(0, n, 256)])
    return cols.numpy().reshape(tuple(x0.shape[1:]) + tuple(li.output.shape[1:]))


def true_reach(li) -> int:
    """The largest distance (input pixels, output mapped back by the scale) from a pixel to where its column is
    non-zero, over every column of the dense F."""
    cols = dense_columns(li)
    _, h, w = cols.shape[:3]
    s = cols.shape[4] // h
    reach = 0
    for y in range(h):
        for x in range(w):
            ys, xs = np.nonzero(np.abs(cols[:, y, x]).sum((0, 1)))
            if ys.size:
                reach = max(reach, int(np.max(np.abs(ys // s - y))), int(np.max(np.abs(xs // s - x))))
    return reach


@pytest.mark.parametrize("model_cls", [SpatialGate, Difference, WhereGate, Strided])
def test_windowed_columns_equal_whole_image_columns(model_cls):
    torch.manual_seed(1)
    model = model_cls().eval()
    x0 = _x0()
    li = interpret(model, x0)
    radius = li.receptive_radius
    assert radius is not None and radius >= true_reach(li)
    full = dense_columns(li)  # (C_in, H, W, C_out, H_out, W_out)
    n = x0.shape[-1]
    checked = 0
    for top in range(0, n, 8):
        for left in range(0, n, 8):
            (r_top, r_left, r_h, r_w), block = tile_columns(li, (3, n, n), (top, left, 8, 8), batch=64)
            want = np.moveaxis(full[:, top:top + 8, left:left + 8], (0, 1, 2), (3, 4, 5))
            assert np.abs(block - want[:, r_top:r_top + r_h, r_left:r_left + r_w]).max() <= 1e-6
            outside = want.copy()
            outside[:, r_top:r_top + r_h, r_left:r_left + r_w] = 0
            assert np.abs(outside).max() == 0  # nothing truncated
            checked += (r_h, r_w) != tuple(li.output.shape[2:])
    assert checked > 0  # real windows were used


def test_the_old_centre_probe_would_have_truncated_the_gate():
    """A control: with the gate shut at the centre, the reach seen from the centre alone is short; the radius
    must be the reach of the open gate elsewhere."""
    torch.manual_seed(1)
    li = interpret(SpatialGate().eval(), _x0())
    cols = dense_columns(li)
    ys, xs = np.nonzero(np.abs(cols[:, 16, 16]).sum((0, 1)))
    centre_reach = max(np.abs(ys - 16).max(initial=0), np.abs(xs - 16).max(initial=0))
    assert centre_reach + 3 <= true_reach(li) <= li.receptive_radius


@pytest.mark.parametrize("model_cls", [Circular, FrozenIndex])
def test_no_bound_means_whole_image(model_cls):
    torch.manual_seed(1)
    li = interpret(model_cls().eval(), _x0(16))
    assert li.receptive_radius is None
    assert li.window((4, 4, 4, 4)).in_box == (0, 0, 16, 16)


def test_probes_cover_every_phase_at_centre_corners_and_edges():
    probes = probe_pixels(12, 16, 2, 4)
    assert len(probes) == 9 * 8 and len(set(probes)) == len(probes)
    for by, bx in [(0, 0), (6, 8), (10, 12), (0, 12), (10, 0)]:
        assert {(by + i, bx + j) for i in range(2) for j in range(4)} <= set(probes)


@pytest.mark.parametrize("model_cls", [AlignCorners, FixedSize])
def test_operations_that_do_not_commute_with_cropping_use_the_whole_image(model_cls):
    torch.manual_seed(1)
    li = interpret(model_cls().eval(), _x0())
    assert li.receptive_radius is not None  # local, but its windows would not give the same columns
    assert li.window((12, 12, 4, 4)).in_box == (0, 0, 32, 32)
    (r_top, r_left, r_h, r_w), block = tile_columns(li, (3, 32, 32), (12, 12, 4, 4), batch=48)
    full = np.moveaxis(dense_columns(li)[:, 12:16, 12:16], (0, 1, 2), (3, 4, 5))
    assert np.abs(block - full[:, r_top:r_top + r_h, r_left:r_left + r_w]).max() <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_columns_assembled_on_a_gpu_equal_those_on_the_cpu():
    """The block is built on the device and copied once into page-locked host memory (compute.host_array)."""
    torch.manual_seed(1)
    model = SpatialGate().eval()
    x0 = _x0()
    cpu = interpret(model, x0)
    gpu = interpret(model.cuda(), x0.cuda())
    for box in [(0, 0, 8, 8), (12, 12, 4, 4)]:
        region_c, block_c = tile_columns(cpu, (3, 32, 32), box, batch=7)
        region_g, block_g = tile_columns(gpu, (3, 32, 32), box, batch=7)
        assert region_c == region_g and isinstance(block_g, np.ndarray)
        assert np.abs(block_g - block_c).max() <= 1e-5 * max(1.0, np.abs(block_c).max())
