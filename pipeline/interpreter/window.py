"""Locality: the receptive radius of a frozen network and windows cropped around input tiles.

A column of F (the response to one input pixel) of a convolutional network is non-zero only within the
receptive field of that pixel. So the columns of a tile can be computed on a window of the frozen network
(masks, gains and switches cropped with it) that holds the tile plus the receptive radius on every side:
inside the window every intermediate perturbation is the same as on the whole image, and outside it is zero,
which is what the window's zero padding supplies.

The radius is derived from the model itself, not from a table: a *support pass* pushes non-negative
one-hot probes through the network with every mask, gate, switch and comparison opened (units and norms
pass everything, convolutions use |W|, max-pools pool over their whole window, products count their static
factors as ones, sums and `where` take the union of their terms, see `Rule.support`), and the radius is the
largest distance, in input pixels, between a probe and any feature-map pixel it reaches, over every layer.
Probes sit at the centre, the corners and the edge midpoints, at every phase of the network's total stride.
Where no bound can be established (global operations such as flatten + linear or global pooling, circular
padding, indices frozen at x0) the radius is None and columns are computed on the whole image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import torch

from .errors import InputError


#: resampling factors between a feature map and the one it is computed from
_FACTORS = [Fraction(n, d) for n in (1, 2, 3, 4, 8) for d in (1, 2, 3, 4, 8)]


def _nice(ratio: float) -> Fraction:
    return min(_FACTORS, key=lambda f: abs(math.log(ratio) - math.log(f)))


def _geometry(li) -> dict | None:
    """Feature-map size (h, w) -> (sy, ey, sx, ex): the map has sy·H + ey rows (ey from padding or valid
    convolutions, sy the product of resampling factors on the way from the input), likewise columns.

    None when some linear node is not a 4-D feature map (a global head) or the sizes do not follow this
    pattern (e.g. odd sizes through strided layers): such networks are not cut into windows. Computed once per
    interpreter (every window asks for it).
    """
    if "_geometry" not in li.__dict__:
        li.__dict__["_geometry"] = _feature_geometry(li)
    return li.__dict__["_geometry"]


def _feature_geometry(li) -> dict | None:
    """`_geometry`, computed."""
    H, W = li.x0.shape[2:]
    placeholder = next(n for n in li.nodes if n.op == "placeholder")
    size = {placeholder: (H, W)}
    geo = {placeholder: (Fraction(1), Fraction(0), Fraction(1), Fraction(0))}
    by_size = {(H, W): geo[placeholder]}
    for node, site in li.sites.items():
        shape = site.shape
        if not (isinstance(shape, torch.Size) and len(shape) == 4) or min(shape[2:]) == 0:
            return None
        parent = next((n for n in node.all_input_nodes if n in geo), placeholder)
        (sy, _, sx, _), (hp, wp) = geo[parent], size[parent]
        sy, sx = sy * _nice(shape[2] / hp), sx * _nice(shape[3] / wp)
        g = (sy, shape[2] - sy * H, sx, shape[3] - sx * W)
        if g[1].denominator != 1 or g[3].denominator != 1 or by_size.setdefault((shape[2], shape[3]), g) != g:
            return None
        geo[node], size[node] = g, (shape[2], shape[3])
    return by_size


def alignment(geometry) -> tuple[int, int]:
    """The smallest steps (in input pixels) at which window edges fall on whole pixels of every feature map."""
    ay = math.lcm(*[g[0].denominator for g in geometry.values()])
    ax = math.lcm(*[g[2].denominator for g in geometry.values()])
    return ay, ax


#: probes per support pass (each probe costs one full-image pass of the frozen network; a batch holds their
#: feature maps at once, so it stays small for large images)
PROBE_BATCH = 4


def probe_pixels(H: int, W: int, ay: int, ax: int) -> list[tuple[int, int]]:
    """Input pixels the support pass starts from: every stride phase (ay·ax pixels of one aligned cell) at the
    centre, the four corners and the four edge midpoints of an H×W input."""
    ys = sorted({0, (H // 2) // ay * ay, (H - ay) // ay * ay})
    xs = sorted({0, (W // 2) // ax * ax, (W - ax) // ax * ax})
    return [(by + ky, bx + kx) for by in ys for bx in xs for ky in range(ay) for kx in range(ax)]


def _frozen_structure(li) -> str | None:
    """Where a linear operation's structure depends on values frozen at x0 (indices computed from the input,
    e.g. gathers by an argsort), which the support pass cannot open: the site's location, else None."""
    for node, site in li.sites.items():
        if not site.rule.opens_static and any(n in li.frozen for n in node.all_input_nodes):
            return site.where
    return None


def receptive_radius(li) -> int | None:
    """The receptive radius (input pixels) of the frozen network, or None where no bound can be established.

    Non-negative one-hot probes (see `probe_pixels`) go through the network with every mask, gate, switch and
    comparison opened (`Rule.support`); every feature map reports, per probe, the box it reaches, mapped back to
    input pixels. A reach that stops at a border of the feature map is cut by the image: it is trusted only
    when it is not farther from its probe than the largest reach seen away from the borders (so the network
    reaches no farther near a border than in the interior; a probe at the centre that reaches a border, a
    global operation, circular padding and wrap-arounds give None). None too for networks that are not
    stacks of 4-D feature maps (see `_geometry`), for operations indexed by values frozen at x0, and when the
    support pass fails.
    """
    geometry = _geometry(li)
    if geometry is None or _frozen_structure(li) is not None:
        return None
    H, W = li.x0.shape[2:]
    ay, ax = alignment(geometry)
    if ay > H // 2 or ax > W // 2:
        return None
    probes = probe_pixels(H, W, ay, ax)
    free, cut = [0], []  # reaches away from the borders; (distance, probe) of reaches stopped by a border

    def observe(part):
        def record(node, out):
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                return
            h, w = out.shape[2:]
            sy, ey, sx, ex = geometry[(h, w)]
            reach = out.any(1)  # (P, h, w): 0/1 indicators
            for i, (py, px) in enumerate(part):
                rows = torch.nonzero(reach[i].any(1)).flatten()
                cols = torch.nonzero(reach[i].any(0)).flatten()
                if rows.numel() == 0:
                    continue
                r0, r1, c0, c1 = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
                # map rows back to input pixels (padding taken as symmetric, hence the +1 margin below)
                lo_y, hi_y = math.floor((r0 - ey / 2) / sy), math.ceil((r1 + 1 - ey / 2) / sy) - 1
                lo_x, hi_x = math.floor((c0 - ex / 2) / sx), math.ceil((c1 + 1 - ex / 2) / sx) - 1
                for distance, at_border in ((py - lo_y, r0 == 0), (hi_y - py, r1 == h - 1),
                                            (px - lo_x, c0 == 0), (hi_x - px, c1 == w - 1)):
                    (cut.append((distance, (py, px))) if at_border else free.append(distance))
        return record

    try:
        with torch.no_grad():
            for start in range(0, len(probes), PROBE_BATCH):
                part = probes[start:start + PROBE_BATCH]
                v = torch.zeros((len(part), *li.x0.shape[1:]), dtype=li.x0.dtype, device=li.x0.device)
                for i, (py, px) in enumerate(part):
                    v[i, :, py, px] = 1.0
                li._forward(v, method="support", observe=observe(part))
    except Exception:  # a custom operation without a support pass: no bound, so no windows (never a truncation)
        return None
    bound = max(free)
    if any(distance > bound for distance, _ in cut):
        return None
    return int(bound) + 1


@dataclass(frozen=True)
class Window:
    """A frozen linear network cropped to `in_box` = (top, left, height, width) of the input, whose
    output covers `out_box` (same convention, output pixels). `forward(v)`: (B, C, height, width) ->
    (B, C_out, out_height, out_width)."""

    li: object
    in_box: tuple
    out_box: tuple
    sites: dict
    statics: dict

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        shape = (self.li.x0.shape[1], self.in_box[2], self.in_box[3])
        self.li._check(v, shape, "Window.forward")
        with torch.no_grad():
            return self.li._forward(v, sites=self.sites, statics=self.statics)


class Cropper:
    """Crops feature-map tensors of the full image to their part of the window, grid by grid."""

    def __init__(self, boxes: dict):
        self.boxes = boxes  # (h, w) of a full feature map -> (top, left, height, width) in that map

    def box(self, grid) -> tuple:
        return self.boxes[tuple(grid)]

    def __call__(self, t):
        if isinstance(t, torch.Tensor) and t.dim() >= 3 and tuple(t.shape[-2:]) in self.boxes:
            top, left, h, w = self.boxes[tuple(t.shape[-2:])]
            return t[..., top:top + h, left:left + w]
        return t


def _span(start, stop, size, step):
    """[start, stop) widened to multiples of `step` (or the image edge) and clipped to [0, size)."""
    start = max(0, start) // step * step
    stop = min(size, -(-stop // step) * step)
    return start, stop


def make_window(li, box) -> Window | None:
    top, left, height, width = (int(b) for b in box)
    H, W = li.x0.shape[2:]
    if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > H or left + width > W:
        raise InputError(f"tile {tuple(box)} is not inside the {H}x{W} input")
    radius = li.receptive_radius
    geometry = _geometry(li)
    if radius is None or geometry is None:
        return _full(li)
    ay, ax = alignment(geometry)
    y0, y1 = _span(top - radius, top + height + radius, H, ay)
    x0, x1 = _span(left - radius, left + width + radius, W, ax)
    if (y0, y1, x0, x1) == (0, H, 0, W):
        return _full(li)
    boxes = {(h, w): (int(y0 * sy), int(x0 * sx), int((y1 - y0) * sy + ey), int((x1 - x0) * sx + ex))
             for (h, w), (sy, ey, sx, ex) in geometry.items()}
    crop = Cropper(boxes)
    sites = {n: replace(s, state=s.rule.crop(s.state, crop)) for n, s in li.sites.items()}
    statics = {n: crop(v) if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == 1 else v
               for n, v in li.static.items()}
    out = li.output
    oh, ow = out.shape[2:]
    oy0, ox0, ohh, oww = boxes[(oh, ow)]
    window = Window(li, (y0, x0, y1 - y0, x1 - x0), (oy0, ox0, ohh, oww), sites, statics)
    fits = li.__dict__.setdefault("_window_sizes_fit", {})
    size = (y1 - y0, x1 - x0)
    if size not in fits:  # sizes follow from the window's size alone
        corners = [(y, x) for y in (top, top + height - 1) for x in (left, left + width - 1)]
        fits[size] = _shapes_fit(window, boxes) and _reproduces(window, corners)
    return window if fits[size] else _full(li)  # operations that do not commute with cropping: the whole image


def _full(li) -> Window:
    H, W = li.x0.shape[2:]
    oh, ow = li.output.shape[2:] if li.output.dim() == 4 else (None, None)
    return Window(li, (0, 0, H, W), (0, 0, oh, ow), li.sites, li.static)


def _reproduces(window: Window, pixels: list[tuple[int, int]], rtol: float = 1e-5) -> bool:
    """Whether the window gives the whole image's columns of the input pixels (0, y, x) for (y, x) in `pixels` (the
    tile's corners), inside its output box and (zero) outside it. Operations that keep sizes but do not commute
    with cropping (interpolation with align_corners=True, whose sampling grid depends on the map's size; an
    upsampling to the size of another map, whose scale then differs in the window) fail it, and do so far from
    the window's origin, where the two sampling grids have drifted apart: hence the tile's far corner too."""
    li = window.li
    e = torch.zeros((len(pixels), *li.x0.shape[1:]), dtype=li.x0.dtype, device=li.x0.device)
    for k, (y, x) in enumerate(pixels):
        e[k, 0, y, x] = 1.0
    iy, ix, ih, iw = window.in_box
    oy, ox, oh, ow = window.out_box
    with torch.no_grad():
        full = li._forward(e)
        part = li._forward(e[:, :, iy:iy + ih, ix:ix + iw], sites=window.sites, statics=window.statics)
    scale = float(full.abs().max())
    inside = full[:, :, oy:oy + oh, ox:ox + ow]
    outside = full.abs()
    outside[:, :, oy:oy + oh, ox:ox + ow] = 0  # (a difference of two float32 sums would be rounding, ~4e-5·scale)
    return bool((part - inside).abs().max() <= rtol * scale and outside.max() <= rtol * scale)


def _shapes_fit(window: Window, boxes: dict) -> bool:
    """Whether every feature map of the window has the size of its cropped box (not so when the network has
    operations, e.g. fixed output sizes, that do not commute with cropping)."""
    li = window.li
    bad = []

    def observe(node, out):
        full = li.sites[node].shape
        want = boxes[(full[2], full[3])]
        if tuple(out.shape[2:]) != (want[2], want[3]):
            bad.append(f"{li.sites[node].where}: {tuple(out.shape[2:])} != {(want[2], want[3])}")

    v = torch.zeros((1, li.x0.shape[1], window.in_box[2], window.in_box[3]), dtype=li.x0.dtype,
                    device=li.x0.device)
    try:
        with torch.no_grad():
            li._forward(v, sites=window.sites, statics=window.statics, observe=observe)
    except RuntimeError:  # sizes that do not broadcast or concatenate inside the window
        return False
    return not bad
