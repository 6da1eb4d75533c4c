"""The flashlight walk: a video of the columns of F along a path across the input, input and output side by side.

Frame layout (pixels, before the integer ``zoom``): [x0 upscaled to the output size, with the current input
pixel outlined] | 8-pixel gap | [the column of that pixel over the output domain, white-impulse response
(summed over input and output channels), through the diverging colour map at ±its own max]; a caption strip
below. Written as MP4 when an encoder is installed (imageio-ffmpeg or PyAV), otherwise as GIF.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from pipeline.export import render
from pipeline.store import Store

GAP = 8
CAPTION = 14


def walk_path(shape_hw: tuple[int, int], frames: int) -> list[tuple[int, int]]:
    """``frames`` input pixels (y, x) evenly spaced along a serpentine walk over about √(frames·H/W) evenly
    spaced rows (left to right, then right to left one row band lower), so that consecutive frames are
    a few pixels apart and the walk covers the whole image; every pixel when ``frames`` ≥ H·W."""
    h, w = shape_hw
    if frames >= h * w:
        rows = list(range(h))
    else:
        n_rows = int(min(h, max(1, round(math.sqrt(frames * h / w)))))
        rows = sorted({int(round(r)) for r in np.linspace(0, h - 1, n_rows)})
    scan = [(y, x if i % 2 == 0 else w - 1 - x) for i, y in enumerate(rows) for x in range(w)]
    if frames >= len(scan):
        return scan
    idx = np.linspace(0, len(scan) - 1, frames).round().astype(int)
    return [scan[i] for i in idx]


def mp4_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def _natural_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) uint8 (C = 3 as colour, otherwise the channel mean as grey)."""
    q, _, _ = render.natural(image if image.shape[0] in (1, 3) else image.mean(0, keepdims=True))
    return q if q.ndim == 3 else np.repeat(q[..., None], 3, axis=-1)


def frame(store: Store, y: int, x: int, lut: np.ndarray, left: np.ndarray) -> np.ndarray:
    """One frame at zoom 1: (H_out + CAPTION, 2·W_out + GAP, 3) uint8."""
    from PIL import Image, ImageDraw

    _, h_out, w_out = store.out_shape
    _, h_in, w_in = store.in_shape
    col = np.asarray(store.F[:, :, :, :, y, x]).sum(axis=(0, 3))  # (H_out, W_out), chunk-aligned read
    img = np.zeros((h_out + CAPTION, 2 * w_out + GAP, 3), np.uint8)
    img[:h_out, :w_out] = left
    img[:h_out, w_out + GAP:] = render.colourise(col, float(np.abs(col).max()), lut)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    sy, sx = h_out / h_in, w_out / w_in
    box = (int(x * sx) - 1, int(y * sy) - 1, int((x + 1) * sx), int((y + 1) * sy))
    draw.rectangle(box, outline=(255, 176, 0))
    draw.text((2, h_out + 1), f"input ({y}, {x})  max |F| {np.abs(col).max():.3g}", fill=(230, 230, 230))
    return np.asarray(pil)


def write_video(store: Store, out, *, frames: int = 120, fps: int = 12, zoom: int | None = None,
                fmt: str = "auto", progress: bool = True) -> Path:
    """Write the flashlight walk of ``store`` to ``out``; returns the path written (suffix .gif when an MP4
    was asked for and no encoder is installed, or ``fmt="gif"``)."""
    import imageio.v3 as iio

    from pipeline.progress import iterate

    out = Path(out)
    if fmt == "auto":
        fmt = "mp4" if out.suffix.lower() != ".gif" and mp4_available() else "gif"
    if fmt == "mp4" and not mp4_available():
        raise ValueError("no MP4 encoder is installed (pip install imageio-ffmpeg, or use --format gif)")
    if fmt == "gif" and out.suffix.lower() != ".gif":
        out = out.with_suffix(".gif")
    _, h_out, w_out = store.out_shape
    zoom = zoom or max(1, 512 // max(h_out, 2 * w_out))
    lut = render.diverging_lut()
    left = _natural_rgb(store.x0)
    left = np.repeat(np.repeat(left, h_out // left.shape[0], 0), w_out // left.shape[1], 1)
    if left.shape[:2] != (h_out, w_out):  # non-integer scale: nearest sampling
        ys = (np.arange(h_out) * store.in_shape[1] // h_out)
        xs = (np.arange(w_out) * store.in_shape[2] // w_out)
        left = _natural_rgb(store.x0)[ys][:, xs]
    path = walk_path(store.in_shape[1:], frames)
    images = []
    for y, x in iterate(path, f"video {out.name}", unit="frames", enabled=progress):
        f = frame(store, y, x, lut, left)
        images.append(np.repeat(np.repeat(f, zoom, 0), zoom, 1) if zoom > 1 else f)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    if fmt == "gif":
        iio.imwrite(tmp, np.stack(images), extension=".gif", duration=1000 / fps, loop=0)
    else:
        iio.imwrite(tmp, np.stack(images), extension=".mp4", fps=fps)
    tmp.replace(out)
    return out
