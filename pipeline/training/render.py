"""8×8 digits rendered the ways they reach the tool: upsampled by any method, shifted, rotated, scaled, with
thicker or thinner strokes, saved as 8-bit files.

Digits are tensors (N, 1, 8, 8) in [0, 1], light ink on black (scikit-learn's digits divided by 16). Everything
here is a pure function of its arguments (random choices come from a numpy Generator), so a seed fixes every
rendering.

- `upsample`, `shift`, `thickness`, `rotate`, `quantise`: the single operations;
- `augment`: the training distribution (`Digits` task): a random combination of all of them per digit;
- `rendered`: the fixed renderings the held-out evaluation uses (one upsampling method, one shift).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.preprocess import stretch

#: The upsampling methods of image tools: nearest neighbour, bilinear, bicubic (Keys, a = −0.75) and area
#: averaging (torch's 'area' = adaptive average pooling; for integer factors it equals nearest neighbour).
MODES = ("nearest", "bilinear", "bicubic", "area")
#: The models' input side.
SIDE = 32


def upsample(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, 1, h, w) -> (N, 1, size, size) in [0, 1] by one of `MODES` (align_corners=False; 'nearest' is
    torch's 'nearest-exact', the pixel-centre rule of PIL and OpenCV)."""
    if mode not in MODES:
        raise ValueError(f"unknown upsampling mode '{mode}' (one of {', '.join(MODES)})")
    torch_mode = "nearest-exact" if mode == "nearest" else mode
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(size, size), mode=torch_mode, **kwargs).clamp(0, 1)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move images (N, C, H, W) by (dy, dx) pixels (down, right), filling with 0 (what leaves the frame is lost)."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def thickness(x: torch.Tensor, k: int) -> torch.Tensor:
    """Grey-level dilation (k > 0: thicker strokes) or erosion (k < 0: thinner) by a 3×3 square, |k| times."""
    for _ in range(abs(k)):
        x = F.max_pool2d(x, 3, stride=1, padding=1) if k > 0 else -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images (N, C, H, W) about their centre (bilinear, 0 outside), counter-clockwise as displayed."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Values rounded to 8 bits, as an image file stores them."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def rendered(x8: torch.Tensor, mode: str, dy: int = 0, dx: int = 0, side: int = SIDE) -> torch.Tensor:
    """The fixed evaluation rendering: upsampled to side × side by `mode`, shifted by (dy, dx), 8-bit."""
    return quantise(shift(upsample(x8, side, mode), dy, dx))


#: The training distribution of `augment` (probabilities and ranges per digit).
AUGMENT = {
    "sizes": (24, 36),           # rendered side before placing in the 32×32 frame (scales 0.75–1.125)
    "via_double": 0.25,          # rendered at twice the size, then shrunk (bilinear, antialiased): a large file
    "thickness": (-1, 0, 0, 1),  # drawn uniformly: erosion, none (twice as likely), dilation by 3×3
    "rotate": 0.5,               # probability of a rotation ...
    "degrees": 12.0,             # ... by an angle uniform in ±degrees
    "shift": 3,                  # shifts uniform in ±shift pixels, each axis
}


def augment(x8: torch.Tensor, rng: np.random.Generator, side: int = SIDE) -> torch.Tensor:
    """Random renderings (N, 1, side, side) of digits (N, 1, 8, 8), one draw of `AUGMENT` per digit.

    Per digit: a method of `MODES` and a side s in `sizes` (upsampled 8 → s, or 8 → 2s → s by antialiased
    bilinear shrinking), a stroke `thickness`, a rotation, placement at the centre of the frame moved by a
    shift, 8-bit quantisation, and the levels of `pipeline.preprocess.stretch` (background 0, brightest 1), as
    the preprocessing of an image file gives.
    """
    a = AUGMENT
    n = x8.shape[0]
    modes = rng.integers(0, len(MODES), n)
    sizes = rng.integers(a["sizes"][0], a["sizes"][1] + 1, n)
    double = rng.random(n) < a["via_double"]
    thick = rng.choice(a["thickness"], n)
    turn = rng.random(n) < a["rotate"]
    degrees = rng.uniform(-a["degrees"], a["degrees"], n)
    shifts = rng.integers(-a["shift"], a["shift"] + 1, (n, 2))
    margin = a["sizes"][1] + 2 * a["shift"]  # canvas large enough for any size and shift
    out = []
    for i in range(n):
        s = int(sizes[i])
        img = upsample(x8[i:i + 1], 2 * s if double[i] else s, MODES[modes[i]])
        if double[i]:
            img = F.interpolate(img, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        img = thickness(img, int(thick[i]))
        canvas = torch.zeros(1, 1, margin, margin, dtype=img.dtype)
        top = (margin - s) // 2
        canvas[..., top:top + s, top:top + s] = img
        if turn[i]:
            canvas = rotate(canvas, float(degrees[i]))
        corner = (margin - side) // 2
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        out.append(canvas[..., corner - dy:corner - dy + side, corner - dx:corner - dx + side])
    x = quantise(torch.cat(out))
    return stretch(x, torch.zeros(n, dtype=x.dtype))[0]
