"""The walk planner: a path across an image that visits a strong edge, a flat area and a texture, at a steady pace.

Positions are continuous image coordinates (y, x) in pixels of the planned image, pixel (i, j) covering
[i, i+1) × [j, j+1); :func:`to_pixels` maps them onto any grid of the same picture (the input grid for columns,
the output grid for rows), so one plan serves every domain and every model.

- **edge**: from the pixel of largest gradient magnitude, the ridge of the magnitude is followed both ways
  along the edge's tangent while it stays above half the start value;
- **flat area**: a straight line, through the centre of the window of least local standard deviation, in the
  direction (of four) whose samples are flattest;
- **texture**: a circle around the point of largest gradient energy times incoherence (1 − the coherence of
  the structure tensor: many orientations, not one edge), away from the edge and the flat area when possible.

Segments are joined by straight moves; :func:`pace` samples the whole polyline at equal arc-length steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: the eight neighbour steps (dy, dx)
STEPS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


@dataclass(frozen=True)
class Segment:
    """One stretch of the walk: ``kind`` ("edge", "flat", "texture" or "move"), ``points`` (n, 2) float (y, x)
    polyline in image pixels, and the measured ``figures`` that describe it (see :func:`plan`)."""

    kind: str
    points: np.ndarray
    figures: dict = field(default_factory=dict)


def grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) float64: the channel mean, scaled to 0..1 over the image's range."""
    g = np.asarray(image, np.float64).mean(axis=0)
    span = g.max() - g.min()
    return (g - g.min()) / span if span > 0 else np.zeros_like(g)


def _gradients(g: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    s = ndimage.gaussian_filter(g, sigma, mode="reflect")
    return ndimage.sobel(s, axis=0, mode="reflect") / 8, ndimage.sobel(s, axis=1, mode="reflect") / 8


def _trace(mag: np.ndarray, gy: np.ndarray, gx: np.ndarray, seed, direction, floor: float, limit: int):
    """Follow the ridge of ``mag`` from ``seed`` along the tangent (−gx, gy) signed by ``direction``."""
    h, w = mag.shape
    path, seen = [], {tuple(seed)}
    p, heading = np.array(seed), np.array(direction, float)
    for _ in range(limit):
        tangent = np.array([-gx[tuple(p)], gy[tuple(p)]])
        norm = np.linalg.norm(tangent)
        tangent = tangent / norm if norm > 0 else heading
        if tangent @ heading < 0:
            tangent = -tangent
        best, best_score = None, 0.0
        for step in STEPS:
            q = p + step
            if not (0 <= q[0] < h and 0 <= q[1] < w) or tuple(q) in seen:
                continue
            align = (step / np.linalg.norm(step)) @ tangent
            if align <= 0.5 or mag[tuple(q)] < floor:
                continue
            score = mag[tuple(q)] * align
            if score > best_score:
                best, best_score = q, score
        if best is None:
            break
        heading = (best - p) / np.linalg.norm(best - p)
        p = best
        seen.add(tuple(p))
        path.append(p.copy())
    return path


def _edge(mag, gy, gx, limit):
    h, w = mag.shape
    inner = mag.copy()
    b = 1 if min(h, w) > 4 else 0
    if b:
        inner[:b], inner[-b:], inner[:, :b], inner[:, -b:] = 0, 0, 0, 0
    strong = np.argwhere(inner >= 0.99 * inner.max())  # the strongest edge pixels: start nearest the centre
    seed = strong[np.argmin(((strong + 0.5 - np.array([h, w]) / 2) ** 2).sum(1))]
    floor = 0.5 * mag[tuple(seed)]
    tangent = np.array([-gx[tuple(seed)], gy[tuple(seed)]])
    tangent = tangent / np.linalg.norm(tangent) if np.linalg.norm(tangent) > 0 else np.array([0.0, 1.0])
    back = _trace(mag, gy, gx, seed, -tangent, floor, limit // 2)
    ahead = _trace(mag, gy, gx, seed, tangent, floor, limit - len(back))  # what one side leaves, the other takes
    if len(back) + len(ahead) < limit and len(back) == limit // 2:
        back = _trace(mag, gy, gx, seed, -tangent, floor, limit - len(ahead))
    pixels = np.array(back[::-1] + [seed] + ahead, float)
    return pixels + 0.5, seed


def _local_std(g: np.ndarray, size: int) -> np.ndarray:
    mean = ndimage.uniform_filter(g, size, mode="reflect")
    sq = ndimage.uniform_filter(g * g, size, mode="reflect")
    return np.sqrt(np.maximum(sq - mean * mean, 0))


def _inside(points: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.stack([np.clip(points[:, 0], 0.5, h - 0.5), np.clip(points[:, 1], 0.5, w - 0.5)], axis=1)


def _line(centre, direction, half: float, h: int, w: int) -> np.ndarray:
    t = np.linspace(-half, half, max(2, int(2 * half) + 1))[:, None]
    return _inside(np.asarray(centre, float) + t * np.asarray(direction, float), h, w)


def _far_enough(shape, points: list[np.ndarray], radius: float) -> np.ndarray:
    """(H, W) bool: pixels farther than ``radius`` from the pixels under every polyline of ``points``."""
    near = np.zeros(shape, bool)
    for pts in points:
        near[np.clip(pts[:, 0].astype(int), 0, shape[0] - 1), np.clip(pts[:, 1].astype(int), 0, shape[1] - 1)] = True
    return ndimage.distance_transform_edt(~near) > radius


def plan(image: np.ndarray) -> list[Segment]:
    """The walk over ``image`` (C, H, W): the edge, then the nearer of the flat area and the texture, then the
    other, joined by "move" segments (see the module docstring).

    Figures: edge ``gradient_ratio`` (its mean gradient magnitude over the image's mean); flat ``local_std``
    (the window's standard deviation, as a fraction of the image's range) and ``window`` (its side, pixels);
    texture ``gradient_ratio`` and ``coherence`` (0: no dominant orientation, 1: a single edge).
    """
    g = grey(image)
    h, w = g.shape
    side = min(h, w)
    gy, gx = _gradients(g, sigma=max(0.5, side / 64))
    mag = np.hypot(gy, gx)
    mean_mag = float(mag.mean()) or 1.0
    radius = max(1.5, side / 8)

    edge_pts, seed = _edge(mag, gy, gx, limit=max(4, int(0.6 * max(h, w))))
    edge_mag = float(np.mean([mag[int(y), int(x)] for y, x in edge_pts]))
    edge = Segment("edge", edge_pts, {"gradient_ratio": edge_mag / mean_mag})

    window = max(3, side // 6) | 1
    spread = _local_std(g, window)
    half = max(1.0, side / 8)
    allowed = _far_enough(g.shape, [edge_pts], radius) & _interior(g.shape, half)
    centre = np.unravel_index(int(np.where(allowed, spread, np.inf).argmin() if allowed.any() else spread.argmin()),
                              g.shape)
    centre = np.array(centre, float) + 0.5
    lines = [_line(centre, d, half, h, w) for d in ((0, 1), (1, 0), (0.7071, 0.7071), (0.7071, -0.7071))]
    flat_pts = min(lines, key=lambda pts: spread[pts[:, 0].astype(int), pts[:, 1].astype(int)].max())
    flat = Segment("flat", flat_pts, {"local_std": float(spread[int(centre[0]), int(centre[1])]),
                                      "window": int(window)})

    jyy = ndimage.gaussian_filter(gy * gy, radius / 2)
    jxx = ndimage.gaussian_filter(gx * gx, radius / 2)
    jxy = ndimage.gaussian_filter(gx * gy, radius / 2)
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / np.maximum(energy, 1e-12)
    score = energy * (1 - coherence)
    away = _far_enough(g.shape, [edge_pts, flat_pts], radius)
    interior = _interior(g.shape, radius)
    allowed = away & interior if (away & interior).any() else (interior if interior.any() else np.ones_like(away))
    ty, tx = np.unravel_index(int(np.where(allowed, score, -np.inf).argmax()), g.shape)
    angles = np.linspace(0, 2 * np.pi, max(8, int(2 * np.pi * radius) + 1))
    circle = _inside(np.stack([ty + 0.5 + radius * np.sin(angles), tx + 0.5 + radius * np.cos(angles)], 1), h, w)
    disc = (np.add.outer((np.arange(h) + 0.5 - ty - 0.5) ** 2, (np.arange(w) + 0.5 - tx - 0.5) ** 2)
            <= radius ** 2)
    texture = Segment("texture", circle, {"gradient_ratio": float(mag[disc].mean() / mean_mag),
                                          "coherence": float(coherence[ty, tx])})

    return _tour([edge, flat, texture])


def _interior(shape, margin: float) -> np.ndarray:
    """(H, W) bool: pixels whose centre is at least ``margin`` from the image border."""
    yy, xx = np.mgrid[:shape[0], :shape[1]] + 0.5
    return (yy >= margin) & (yy <= shape[0] - margin) & (xx >= margin) & (xx <= shape[1] - margin)


def _tour(parts: list[Segment]) -> list[Segment]:
    """The first part, then repeatedly the nearest remaining one, each entered at its end nearest to where the
    walk is (a loop is entered at its nearest point), joined by straight "move" segments."""
    out, rest = [parts[0]], list(parts[1:])
    while rest:
        here = out[-1].points[-1]
        entries = [_enter(seg, here) for seg in rest]
        best = min(range(len(rest)), key=lambda i: np.linalg.norm(entries[i].points[0] - here))
        nxt = entries[best]
        rest.pop(best)
        out += [Segment("move", np.stack([here, nxt.points[0]])), nxt]
    return out


def _enter(seg: Segment, here: np.ndarray) -> Segment:
    pts = seg.points
    if seg.kind == "texture":  # a closed loop: start at its point nearest to ``here`` and close it there
        k = int(np.linalg.norm(pts[:-1] - here, axis=1).argmin())
        loop = np.concatenate([pts[k:-1], pts[:k + 1]])
        return Segment(seg.kind, loop, seg.figures)
    if np.linalg.norm(pts[-1] - here) < np.linalg.norm(pts[0] - here):
        return Segment(seg.kind, pts[::-1], seg.figures)
    return seg


def pace(segments: list[Segment], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample the walk at ``frames`` equal arc-length steps (a steady pace; the first and last points are
    included). Returns (positions (frames, 2) float (y, x), segment index (frames,) int)."""
    pts, owner = [], []
    for i, seg in enumerate(segments):
        p = seg.points if not pts else seg.points[1:] if np.allclose(seg.points[0], pts[-1]) else seg.points
        pts.extend(p)
        owner.extend([i] * len(p))
    pts = np.array(pts, float)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    if frames < 1:
        return np.zeros((0, 2)), np.zeros(0, int)
    if arc[-1] == 0:
        return np.repeat(pts[:1], frames, 0), np.full(frames, owner[0])
    t = np.linspace(0, arc[-1], frames)
    pos = np.stack([np.interp(t, arc, pts[:, 0]), np.interp(t, arc, pts[:, 1])], axis=1)
    # a sample belongs to the segment whose stretch of arc holds it (the end point of a segment opens the next)
    idx = np.clip(np.searchsorted(arc, t, side="right") - 1, 0, len(pts) - 2 if len(pts) > 1 else 0)
    seg_of = np.array(owner)[np.minimum(idx + 1, len(owner) - 1)]
    return pos, seg_of


def to_pixels(positions: np.ndarray, plan_shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Positions (n, 2) in pixels of a ``plan_shape`` image -> int pixel indices (n, 2) on a ``grid`` (H, W)
    covering the same picture."""
    scale = np.array(grid, float) / np.array(plan_shape, float)
    pix = np.floor(positions * scale).astype(int)
    return np.minimum(np.maximum(pix, 0), np.array(grid) - 1)
