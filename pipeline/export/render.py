"""Colour map, 8-bit quantisation and PNG sprite sheets for the site (pure numpy; no store access).

A filter plane is quantised to one byte per pixel: ``q = 128 + round(127 · v / scale)`` with ``scale`` the
largest |v| of the plane (per-filter normalisation) or of all planes of its kind (global normalisation), so
``q`` is 1..255, 128 is exactly zero, and the rendering error is at most ``scale / 254``. The sheets are
stored as 8-bit grey PNGs of ``q``; the viewer maps ``q`` through :func:`diverging_lut` (the same table is
written into the manifest), so the colours on screen and the values decoded from them agree with this module.
"""
from __future__ import annotations

import base64
import io
import json
import os
import zlib
from pathlib import Path

import numpy as np

ZERO = 128
LEVELS = 127
#: zlib level of the sheets: 4 encodes about twice as fast as 6 for 3 % larger sheets (measured on EDSR filters)
PNG_LEVEL = 4
#: zlib strategy of quantised sheets (filters and signed images: long runs of the zero level 128): run-length
#: matches only. On 234 sheets of the full-face EDSR4x site: 1.12 s instead of 1.66 s to encode, 3 % smaller
#: (the strategy makes the level irrelevant). Natural images keep zlib's default strategy.
QUANTISED_STRATEGY = zlib.Z_RLE


def diverging_lut() -> np.ndarray:
    """(256, 3) uint8 signed colour map: blue (q=1, −scale) → near-white (q=128, 0) → red (q=255, +scale).

    Perceptually uniform by construction: each half is a straight line in CIELAB from the neutral centre
    (L*=96) to an end colour of equal lightness (L*=40) and chroma (64; hues 290° and 35°), so equal value
    steps give equal CIE76 colour differences on both sides; every point of both lines is inside the sRGB
    gamut (no clipping). Entry 0 repeats entry 1 (q=0 never occurs in data).
    """
    from skimage.color import lab2rgb

    centre = np.array([96.0, 0.0, 0.0])
    ends = {-1: (40.0, 64.0, np.deg2rad(290.0)), 1: (40.0, 64.0, np.deg2rad(35.0))}
    t = (np.arange(256) - ZERO) / LEVELS
    t[0] = t[1]
    lab = np.empty((256, 3))
    for side, (light, chroma, hue) in ends.items():
        end = np.array([light, chroma * np.cos(hue), chroma * np.sin(hue)])
        sel = np.sign(t) == side
        lab[sel] = centre + np.abs(t[sel])[:, None] * (end - centre)
    lab[t == 0] = centre
    rgb = lab2rgb(lab[None])[0]
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def with_sum(planes: np.ndarray) -> np.ndarray:
    """(c, ...) -> (c + 1, ...) with the channel sum appended, or unchanged when c == 1."""
    return planes if planes.shape[0] == 1 else np.concatenate([planes, planes.sum(0, keepdims=True)])


def plane_scales(planes: np.ndarray) -> np.ndarray:
    """Per-plane normalisation: max |v| over the last two axes of ``planes`` (..., h, w) -> (...)."""
    if planes.shape[-1] * planes.shape[-2] == 0:
        return np.zeros(planes.shape[:-2], np.float32)
    return np.abs(planes).max(axis=(-2, -1)).astype(np.float32)


def quantise(planes: np.ndarray, scales: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Signed values (..., h, w) with scales (...) -> uint8 q in 1..255 (128 = 0); values beyond ±scale clip.

    ``inplace``: ``planes`` (float32) may be overwritten (saves two temporary copies of large blocks)."""
    s = np.asarray(scales, np.float32)[..., None, None]
    safe = np.where(s > 0, s, np.float32(1))
    q = planes if inplace and planes.dtype == np.float32 else np.array(planes, np.float32)
    q *= LEVELS / safe
    np.clip(q, -LEVELS, LEVELS, out=q)
    np.rint(q, out=q)
    q += ZERO
    if (s <= 0).any():
        q[np.broadcast_to(s <= 0, q.shape)] = ZERO
    return q.astype(np.uint8)


def dequantise(q: np.ndarray, scale) -> np.ndarray:
    """Inverse of :func:`quantise`: uint8 q (..., h, w), scale (...) -> float32 values."""
    s = np.asarray(scale, np.float32)
    return (q.astype(np.float32) - ZERO) / LEVELS * (s[..., None, None] if s.ndim else s)


def colourise(values: np.ndarray, scale: float, lut: np.ndarray | None = None) -> np.ndarray:
    """Signed (h, w) values -> (h, w, 3) uint8 through the diverging colour map at ±scale."""
    lut = diverging_lut() if lut is None else lut
    return lut[quantise(values, np.float32(scale))]


def decode_colours(rgb: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """(…, 3) uint8 colours drawn with the colour map -> q (…) uint8, by the nearest entry of the table."""
    lut = (diverging_lut() if lut is None else lut).astype(np.int32)[1:]
    flat = rgb.reshape(-1, 3).astype(np.int32)
    d = ((flat[:, None, :] - lut[None, :, :]) ** 2).sum(-1)
    return (d.argmin(1) + 1).astype(np.uint8).reshape(rgb.shape[:-1])


def natural(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(C, H, W) image with C in {1, 3} -> ((H, W) or (H, W, 3) uint8, lo, hi) mapping lo..hi to 0..255."""
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo if hi > lo else 1.0
    q = np.rint((image - lo) / span * 255).astype(np.uint8)
    return (q[0] if image.shape[0] == 1 else np.moveaxis(q, 0, -1)), lo, hi


def nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, left, height, width) of the True pixels of a (h, w) mask; (0, 0, 0, 0) if none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def crop_quantised(q: np.ndarray, box) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop quantised planes (..., h, w) at ``box`` (top, left, h, w) to the box of their non-zero q.

    Outside it every value quantised to zero (|v| < scale/254), so the crop loses nothing that 8 bits show:
    the filter is still reproduced within the rendering error everywhere.
    """
    t, l, _, _ = box
    if q.size == 0:
        return q, (0, 0, 0, 0)
    sub = nonzero_box((q != ZERO).reshape((-1,) + q.shape[-2:]).any(0))
    st, sl, sh, sw = sub
    return q[..., st:st + sh, sl:sl + sw], ((t + st, l + sl, sh, sw) if sh else (0, 0, 0, 0))


def pack_sheet(entries, columns: int, cell: tuple[int, int] | None = None):
    """Pack quantised entries into one grey sprite sheet.

    ``entries``: list of uint8 arrays (nt, h, w), the nt target planes of one filter, cropped to its box.
    Entry i sits in grid cell (i // columns, i % columns); a cell is nt planes of ``cell`` = (ch, cw) side by
    side (default: the largest entry). Returns (sheet (rows·ch, columns·nt·cw) uint8, (ch, cw)).
    """
    nt = entries[0].shape[0]
    ch = max([e.shape[1] for e in entries] + [1]) if cell is None else cell[0]
    cw = max([e.shape[2] for e in entries] + [1]) if cell is None else cell[1]
    rows = -(-len(entries) // columns)
    sheet = np.full((rows, ch, columns, nt, cw), ZERO, np.uint8)
    for i, e in enumerate(entries):
        r, c = divmod(i, columns)
        sheet[r, :e.shape[1], c, :, :e.shape[2]] = e.transpose(1, 0, 2)
    return sheet.reshape(rows * ch, columns * nt * cw), (ch, cw)


def unpack_entry(sheet: np.ndarray, cell, nt: int, columns: int, i: int, h: int, w: int) -> np.ndarray:
    """The inverse of :func:`pack_sheet` for one entry: uint8 (nt, h, w)."""
    ch, cw = cell
    r, c = divmod(i, columns)
    return np.stack([sheet[r * ch:r * ch + h, (c * nt + t) * cw:(c * nt + t) * cw + w] for t in range(nt)])


def png_bytes(image: np.ndarray, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    """Lossless PNG of a (h, w) grey or (h, w, 3) RGB uint8 image; ``strategy``: zlib's strategy (e.g.
    ``QUANTISED_STRATEGY``)."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", image, extension=".png", compress_level=PNG_LEVEL, compress_type=strategy)


def png_decode(data: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(io.BytesIO(data), extension=".png")


def sheet_script(name: str, meta: dict, png: bytes) -> str:
    """The JavaScript file of one sheet: ``LINTERP.sheet(name, {...meta, png: base64})``.

    The PNG travels inside a script because a page opened from file:// may load scripts but may not read
    back the pixels of images it loaded from files (the canvas would be tainted); a data: URL image is
    readable, so the viewer can show the value under the cursor and tests can decode what is displayed.
    """
    body = json.dumps({**meta, "png": base64.b64encode(png).decode("ascii")}, separators=(",", ":"))
    return f"LINTERP.sheet({json.dumps(name)},{body});\n"


def write_atomic(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` through a temporary file (a killed writer leaves no partial file); returns the
    bytes written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return len(text.encode("utf-8"))


def pack_grey(image: np.ndarray) -> np.ndarray:
    """(h, w) grey -> (h, ⌈w/3⌉, 3) RGB holding three consecutive grey values per pixel (the last padded with 0).

    A browser decodes every PNG to 4 bytes per pixel; packed, a grey sheet has a third of the pixels to decode
    and read back, which is most of the time the viewer spends loading a sheet."""
    h, w = image.shape
    wp = -(-w // 3) * 3
    return np.pad(image, ((0, 0), (0, wp - w))).reshape(h, wp // 3, 3)


def write_sheet(folder: Path, name: str, meta: dict, image: np.ndarray, quantised: bool = True) -> int:
    """Write the sheet ``name`` ("<model>/<sheet>") of a uint8 image as ``folder/<sheet>.js``; returns bytes.
    A grey (h, w) image is stored packed (:func:`pack_grey`), with ``grey: [h, w]`` added to its meta.
    ``quantised``: q values of signed data (encoded with ``QUANTISED_STRATEGY``), not a natural image."""
    if image.ndim == 2:
        meta, image = {**meta, "grey": list(image.shape)}, pack_grey(image)
    png = png_bytes(image, QUANTISED_STRATEGY if quantised else zlib.Z_DEFAULT_STRATEGY)
    return write_atomic(Path(folder) / f"{name.rsplit('/', 1)[-1]}.js", sheet_script(name, meta, png))


def parse_sheet_script(text: str) -> tuple[str, dict, np.ndarray]:
    """Inverse of :func:`sheet_script` and :func:`write_sheet`: (name, meta, decoded sheet image)."""
    head, _, rest = text.partition(",")
    name = json.loads(head[len("LINTERP.sheet("):])
    meta = json.loads(rest.rstrip().removesuffix(";").removesuffix(")"))
    image = png_decode(base64.b64decode(meta.pop("png")))
    if "grey" in meta:
        h, w = meta["grey"]
        image = image.reshape(h, -1)[:, :w]
    return name, meta, image
