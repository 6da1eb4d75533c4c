"""Whole-image sheets of the site: x0, y0, F·x0, the residual and the eigen-images, cut into square tiles.

The viewer decodes only the tiles it shows, so an image of any size loads with bounded memory (a 2048×2048
output is 64 tiles of 256×256 per image).

- Signed images (``img_<image>_<ty>_<tx>``): one sheet per tile holds the tile's nt planes (each channel, plus
  Σ when there are several) side by side, an 8-bit grey PNG of q (see :mod:`pipeline.export.render`), each plane
  quantised with one scale for the whole image, so neighbouring tiles join without seams. Sheet meta:
  ``origin`` (y, x) and ``size`` (h, w) of the tile in image pixels, ``nt``, ``scales`` (nt).
- Natural-colour images (``nat_<image>_<ty>_<tx>``, C in {1, 3}): grey or RGB PNG of lo..hi → 0..255 (lo, hi of
  the whole image). Meta: ``origin``, ``size``, ``lo``, ``hi``, ``channels``.
- ``thumb``: the natural-colour input averaged down to at most ``THUMB`` pixels a side (the viewer's overview map).

``<ty>``, ``<tx>`` are the tile's top-left pixel. Image names: ``x0``, ``y0``, ``fx0``, ``residual``, ``u<i>``,
``v<i>`` (eigen-output / eigen-input i, from 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.export import render

#: tile side in image pixels (a sheet holds nt·TILE² bytes before compression)
TILE = 256
#: largest side of the overview thumbnail, in pixels
THUMB = 192


def tile_origins(h: int, w: int, tile: int = TILE) -> list[tuple[int, int]]:
    """Top-left pixels of the tiles covering an (h, w) image, row-major."""
    return [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]


def write_signed(folder: Path, model: str, name: str, image: np.ndarray, tile: int = TILE) -> dict:
    """Write the tiles of a signed (C, H, W) image; returns {'scales': nt floats, 'bytes', 'files'}."""
    planes = render.with_sum(np.asarray(image, np.float32))
    scales = render.plane_scales(planes)
    q = render.quantise(planes, scales)
    nt = q.shape[0]
    written = 0
    origins = tile_origins(*q.shape[1:], tile)
    meta_scales = [float(f"{v:.9g}") for v in scales]
    for ty, tx in origins:
        part = q[:, ty:ty + tile, tx:tx + tile]
        sheet = np.moveaxis(part, 0, 1).reshape(part.shape[1], nt * part.shape[2])
        meta = {"origin": [ty, tx], "size": list(part.shape[1:]), "nt": nt, "scales": meta_scales}
        written += render.write_sheet(folder, f"{model}/img_{name}_{ty}_{tx}", meta, sheet)
    return {"scales": meta_scales, "bytes": written, "files": len(origins)}


def write_natural(folder: Path, model: str, name: str, image: np.ndarray, tile: int = TILE) -> dict:
    """Write the natural-colour tiles of a (C, H, W) image with C in {1, 3}; returns {'lo', 'hi', 'channels',
    'bytes', 'files'}."""
    q, lo, hi = render.natural(image)
    written = 0
    origins = tile_origins(*q.shape[:2], tile)
    for ty, tx in origins:
        part = q[ty:ty + tile, tx:tx + tile]
        meta = {"origin": [ty, tx], "size": list(part.shape[:2]), "lo": lo, "hi": hi, "channels": image.shape[0]}
        written += render.write_sheet(folder, f"{model}/nat_{name}_{ty}_{tx}", meta, part, quantised=False)
    return {"lo": lo, "hi": hi, "channels": int(image.shape[0]), "bytes": written, "files": len(origins)}


def thumbnail(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    """(C, H, W) -> (C, h, w) block means with integer factor f = ceil(max(H, W) / side), so h, w ≤ side."""
    c, h, w = image.shape
    f = max(1, -(-max(h, w) // side))
    hh, ww = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(image.astype(np.float64), ((0, 0), (0, hh - h), (0, ww - w)), mode="edge")
    return padded.reshape(c, hh // f, f, ww // f, f).mean(axis=(2, 4)).astype(np.float32)


def write_thumbnail(folder: Path, model: str, image: np.ndarray) -> dict:
    """Write ``thumb`` (natural colour, at most THUMB pixels a side) of a (C, H, W) image, C in {1, 3}."""
    small = thumbnail(image)
    q, lo, hi = render.natural(small)
    meta = {"origin": [0, 0], "size": list(small.shape[1:]), "lo": lo, "hi": hi, "channels": image.shape[0]}
    return {"size": list(small.shape[1:]), "bytes": render.write_sheet(folder, f"{model}/thumb", meta, q,
                                                                       quantised=False),
            "files": 1}
