"""Export linterp stores as a static site: sprite sheets of every row and column, tiled images, SVD, a manifest.

Site layout (``OUT``)::

    index.html  viewer.js  viewer.css        copied from the viewer template (``template_dir()``)
    data/manifest.js                         LINTERP.manifest({...}): models, shapes, attributes, colour table
    data/<model>/<sheet>.js                  LINTERP.sheet(name, {meta, png}): one 8-bit PNG sheet

Filter sheets: for a *kind* (``col``: columns, one per input pixel, drawn over the output domain; ``row``:
rows, one per output pixel, drawn over the input domain) the source domain is cut into square blocks of
``block`` pixels (see :func:`plan_kind`); one sheet holds, for one *source channel* s (each channel, plus Σ = the
sum over channels when there are several), the filters of all pixels of one block. A filter is cropped to its
non-zero box in the destination domain (the box outside of which all its values quantise to zero, so nothing
shown at 8 bits is lost) and stored as nt planes (each destination channel, plus Σ), each quantised with its
own scale (see :mod:`pipeline.export.render`). Sheet name: ``<kind>_<s>_<y>_<x>`` with (y, x) the block's
top-left source pixel. Sheet meta: ``origin`` (y, x), ``size`` (h, w) of the block, ``cell`` (ch, cw),
``nt``, ``boxes`` (top, left, h, w per pixel, row-major), ``scales`` (nt per pixel).

Whole images (x0, y0, F·x0, residual, eigen-images, natural colours, a thumbnail) are cut into tiles
(:mod:`pipeline.export.tiles`). ``F·x0`` is contracted from the stored F by the rows tasks (each output pixel's
row is read there anyway), so it shows what the store holds: F·x0 + r = y0 is a check, not a definition.

F is read one source chunk at a time (``F.chunks``), the whole destination domain per read (only the
shards that are stored), so every chunk of F is decompressed once per kind. Tasks run in parallel on a dask
scheduler (the command line uses worker processes: zarr's reads and the per-row quantisation hold the GIL, so
threads barely overlap); each sheet file is written atomically and each task leaves a marker with its result, so
a killed export resumes where it stopped.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.export import render, tiles
from pipeline.export.render import with_sum
from pipeline.shard_io import read_box
from pipeline.store import Store, StoreError, open_store

TEMPLATE_FILES = ("index.html", "viewer.js", "viewer.css")
#: target number of pixels of one filter sheet (the viewer decodes one sheet per block it visits)
SHEET_PIXELS = 1 << 21


class ExportError(ValueError):
    """Stores that cannot be exported together, or a site folder that cannot be written (one line)."""


def template_dir():
    """The viewer template folder (``TEMPLATE_FILES``), found through ``importlib.resources``: an installed
    linterp ships the repository's top-level ``site_template/`` as package data ``pipeline/site_template``; a
    source checkout (run in place or installed editable) uses its own ``site_template/`` next to ``pipeline/``."""
    from importlib.resources import files

    import pipeline

    for folder in (files(pipeline) / "site_template", Path(pipeline.__file__).resolve().parents[1] / "site_template"):
        if all((folder / name).is_file() for name in TEMPLATE_FILES):
            return folder
    raise ExportError("the viewer template (site_template/) is missing from this installation; reinstall linterp")


# ---- channels and kinds ---------------------------------------------------------------------------------
def channel_labels(c: int) -> list[str]:
    """Labels of the selectable channels: each channel, plus Σ (their sum) when there are several."""
    names = ["R", "G", "B"] if c == 3 else (["Y"] if c == 1 else [str(i) for i in range(c)])
    return names + (["Σ"] if c > 1 else [])


def kind_axes(kind: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """F axes (channel, y, x) of the source and destination domain of a kind."""
    return ((3, 4, 5), (0, 1, 2)) if kind == "col" else ((0, 1, 2), (3, 4, 5))


def shard_index(regions, kind: str) -> dict:
    """Stored shards of F (``Store.stored_shards()``) grouped by their place in a kind's source domain:
    {(y start, x start): [region, ...]}, so a read finds the shards of its source pixels without a search."""
    src, _ = kind_axes(kind)
    index = {}
    for region in regions:
        index.setdefault((region[src[1]].start, region[src[2]].start), []).append(region)
    return index


#: (store path, kind, listing token) -> its shard_index, built once per process (threads share it); the last
#: ``SHARD_INDEXES_KEPT`` are kept (two kinds of each store of an export)
_SHARD_INDEXES: dict = {}
SHARD_INDEXES_KEPT = 16


def listing_token(regions) -> str:
    """A short token naming a listing of stored shards (``Store.stored_shards()``): tasks send it, not the
    listing, so that worker processes receive a few bytes and build the index once each."""
    return hashlib.sha1(repr([tuple(s.start for s in r) for r in regions]).encode()).hexdigest()[:16]


def stored_index(store: Store, kind: str, token: str | None = None) -> dict:
    """:func:`shard_index` of the store's stored shards for a kind, cached per process under ``token`` (from
    :func:`listing_token`; None lists the store afresh)."""
    if token is None:
        return shard_index(store.stored_shards(), kind)
    key = (str(store.path), kind, token)
    if key not in _SHARD_INDEXES:
        while len(_SHARD_INDEXES) >= SHARD_INDEXES_KEPT:
            _SHARD_INDEXES.pop(next(iter(_SHARD_INDEXES)))  # the oldest
        _SHARD_INDEXES[key] = shard_index(store.stored_shards(), kind)
    return _SHARD_INDEXES[key]


def read_source_chunk(F, kind: str, sy: int, sx: int, h: int, w: int, regions=None):
    """Filters of the source pixels [sy:sy+h, sx:sx+w] over the destination domain.

    Returns (block, (oy, ox)): float32 block (C_src, h, w, C_dst, bh, bw) holding the destination pixels
    [oy:oy+bh, ox:ox+bw]; F is zero outside them. ``regions``: the stored shards of F, as
    ``Store.stored_shards()`` or its :func:`shard_index` for this kind; when given, the block spans just the
    destination extent of the stored shards of these source pixels (the rest of F is zero), read in one call;
    else the whole destination domain is read.
    """
    src, dst = kind_axes(kind)
    want = [(0, n) for n in F.shape]
    want[src[1]], want[src[2]] = (sy, sy + h), (sx, sx + w)
    if regions is not None:
        index = regions if isinstance(regions, dict) else shard_index(regions, kind)
        grid = F.shards or F.chunks
        gy, gx = grid[src[1]], grid[src[2]]
        hits = [region for y in range(sy // gy * gy, sy + h, gy) for x in range(sx // gx * gx, sx + w, gx)
                for region in index.get((y, x), ())]
        for ax in dst[1:]:
            want[ax] = (min((r[ax].start for r in hits), default=0), max((r[ax].stop for r in hits), default=0))
    block = read_box(F, tuple(slice(a, b) for a, b in want))
    if kind == "col":
        block = np.moveaxis(block, (3, 4, 5), (0, 1, 2))
    return block, (want[dst[1]][0], want[dst[2]][0])


def filter_boxes(block: np.ndarray, offset=(0, 0)) -> np.ndarray:
    """(C_src, h, w, C_dst, H, W) -> int (h, w, 4) non-zero boxes (top, left, height, width) per pixel, in
    destination pixels (``offset`` = the destination position of the block's first row and column)."""
    nz = np.any(block != 0, axis=3).any(axis=0)
    out = np.zeros(nz.shape[:2] + (4,), np.int64)
    for axis, (lo, size), off in ((3, (0, 2), offset[0]), (2, (1, 3), offset[1])):
        hit = nz.any(axis)  # rows (axis 3 collapsed) or columns
        n = hit.shape[-1]
        first = hit.argmax(-1) if n else np.zeros(hit.shape[:-1], int)
        last = n - 1 - hit[..., ::-1].argmax(-1) if n else first
        some = hit.any(-1)
        out[..., lo] = np.where(some, first + off, 0)
        out[..., size] = np.where(some, last - first + 1, 0)
    return out


# ---- planning ---------------------------------------------------------------------------------------------
def plan_kind(store: Store, kind: str, sheet_pixels: int = SHEET_PIXELS) -> dict:
    """Sheet block side and task region of a kind, sized from the filters of three probe chunks of F.

    ``block``: the side of the square block of source pixels one sheet holds, chosen so that a sheet has
    about ``sheet_pixels`` pixels; it is a multiple of F's source chunk or divides it, so that ``task`` (the
    region one task reads: whole chunks, ≥ one block) reads every chunk of F exactly once. Chunk sides with no
    divisor near that size (odd sides: an image side below the compute tile, e.g. 23×17) keep the block at that
    size and read whole blocks and chunks per task (see :func:`task_side`), rather than one sheet per pixel.
    """
    F = store.F
    src, dst = kind_axes(kind)
    c_src, h_src, w_src = (F.shape[a] for a in src)
    c_dst = F.shape[dst[0]]
    ch_y, ch_x = F.chunks[src[1]], F.chunks[src[2]]
    regions, cell = shard_index(store.stored_shards(), kind), 1
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75)):  # the largest filters of three probe chunks
        sy, sx = int(h_src * fy) // ch_y * ch_y, int(w_src * fx) // ch_x * ch_x
        probe, offset = read_source_chunk(F, kind, sy, sx, min(ch_y, h_src - sy), min(ch_x, w_src - sx), regions)
        boxes = filter_boxes(probe, offset)
        cell = max(cell, int(boxes[..., 2].max()) * int(boxes[..., 3].max()))
    nt = len(channel_labels(c_dst))
    side = max(1, int(math.sqrt(sheet_pixels / (nt * cell))))
    unit = math.lcm(ch_y, ch_x)
    if side >= unit:
        block = min(side // unit, -(-max(h_src, w_src) // unit)) * unit
    else:
        g = math.gcd(ch_y, ch_x)
        block = max(d for d in range(1, g + 1) if g % d == 0 and d <= side)
        if 2 * block <= side:
            block = min(side, max(h_src, w_src))
    task = [task_side(block, ch_y, h_src), task_side(block, ch_x, w_src)]
    return {"block": int(block), "task": task, "chunk": [int(ch_y), int(ch_x)], "sources": channel_labels(c_src),
            "targets": channel_labels(c_dst), "src_shape": [c_src, h_src, w_src]}


def task_side(block: int, chunk: int, extent: int) -> int:
    """The side of a task region along one source axis of ``extent`` pixels: a multiple of F's ``chunk`` (each
    chunk read by one task) and of ``block`` (each sheet written by one task), or the whole axis, whichever is
    shorter; the same as max(block, chunk) when one of them divides the other."""
    side = math.lcm(block, chunk)
    return side if side < extent else max(block, chunk, -(-extent // chunk) * chunk)


def task_origins(plan: dict) -> list[tuple[int, int]]:
    _, h, w = plan["src_shape"]
    ty, tx = plan["task"]
    return [(y, x) for y in range(0, h, ty) for x in range(0, w, tx)]


# ---- rendering tasks --------------------------------------------------------------------------------------
def one_blas_thread(task):
    """Run an export task with one BLAS thread: tasks already run in parallel (processes or threads), and
    OpenBLAS threads that wait by spinning took the other worker's core (rows tasks of the demo's edsr store,
    one process: 4.1 s wall for 8.0 s of CPU with two BLAS threads, 4.3 s for 4.3 s with one)."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return task(*args, **kwargs)
    return run


def _iter_chunks(store: Store, kind: str, plan: dict, y0: int, x0: int, listing: str | None = None):
    """Yield (cy, cx, block, offset) for the source chunks of the task region at (y0, x0): ``block`` holds the
    filters of source pixels [cy:cy+h, cx:cx+w] (see :func:`read_source_chunk`); each chunk of F is read once.
    ``listing``: the :func:`listing_token` of ``store.stored_shards()``, if known (see :func:`stored_index`)."""
    _, h_src, w_src = plan["src_shape"]
    ty, tx = plan["task"]
    ch_y, ch_x = plan["chunk"]
    regions = stored_index(store, kind, listing)
    for cy in range(y0, min(y0 + ty, h_src), ch_y):
        for cx in range(x0, min(x0 + tx, w_src), ch_x):
            hy, hx = min(ch_y, h_src - cy), min(ch_x, w_src - cx)
            block, offset = read_source_chunk(store.F, kind, cy, cx, hy, hx, regions)
            yield cy, cx, block, offset


def _union_box(boxes: np.ndarray):
    """(n, 4) boxes (top, left, h, w; h = 0 for none) -> (top, left, bottom, right) of their union, or None."""
    some = boxes[:, 2] > 0
    if not some.any():
        return None
    b = boxes[some]
    return int(b[:, 0].min()), int(b[:, 1].min()), int((b[:, 0] + b[:, 2]).max()), int((b[:, 1] + b[:, 3]).max())


def quantised_row(block: np.ndarray, offset, i: int, boxes: np.ndarray, fixed_scales=None):
    """Quantised planes of the source pixels of row ``i`` of a read block (C_src, h, w, C_dst, bh, bw).

    Works on all pixels of the row at once, over the union of their non-zero boxes ``boxes`` (w, 4). Returns
    (q (ns, w, nt, uh, uw) uint8, scales (ns, w, nt), q_boxes (w, 4), origin (top, left) of q): each pixel's planes
    are each source channel (plus Σ) × each destination channel (plus Σ), quantised at their own largest |value|
    (or at ``fixed_scales`` (ns, nt)); ``q_boxes`` are the boxes of their non-zero q in destination pixels (the
    crop that loses nothing 8 bits show, see ``render.crop_quantised``).
    """
    c_src, _, w, c_dst = block.shape[:4]
    ns, nt = len(channel_labels(c_src)), len(channel_labels(c_dst))
    union = _union_box(boxes)
    if union is None:
        return (np.zeros((ns, w, nt, 0, 0), np.uint8), np.zeros((ns, w, nt), np.float32),
                np.zeros((w, 4), np.int64), (0, 0))
    top, left, bottom, right = union
    sub = block[:, i, :, :, top - offset[0]:bottom - offset[0], left - offset[1]:right - offset[1]]
    planes = np.empty((ns, w, nt) + sub.shape[-2:], np.float32)  # each channel, plus Σ on both sides
    planes[:c_src, :, :c_dst] = sub
    if nt > c_dst:
        planes[:c_src, :, c_dst] = sub.sum(axis=2)
    if ns > c_src:
        planes[c_src] = planes[:c_src].sum(axis=0)
    scales = (np.maximum(planes.max(axis=(-2, -1)), -planes.min(axis=(-2, -1))) if fixed_scales is None
              else np.broadcast_to(np.asarray(fixed_scales, np.float32)[:, None, :], (ns, w, nt)))
    q = render.quantise(planes, scales, inplace=True)
    return q, np.ascontiguousarray(scales), filter_boxes((q != render.ZERO)[:, None], (top, left))[0], (top, left)


@one_blas_thread
def render_task(store_path: str, kind: str, plan: dict, y0: int, x0: int, folder: str, model: str,
                fixed_scales=None, listing: str | None = None, fx0_piece: str | None = None) -> dict:
    """Write the sheets of the blocks in one task region (one sheet per block and source channel).

    ``fixed_scales``: None for per-filter normalisation, or (n_sources, nt) global scales. ``listing``:
    the :func:`listing_token` of the stored shards of F (listed once per process rather than once per task).
    ``fx0_piece`` (rows only): a ``.npz`` path where the task saves F·x0 at its output pixels, contracted from
    the rows it reads (``origin`` (y, x) and ``values`` (C_out, h, w)), so F·x0 costs no extra read of F.
    Returns {'filters', 'bytes', 'files'}.
    """
    store = open_store(store_path)
    _, h_src, w_src = plan["src_shape"]
    b = plan["block"]
    ns, nt = len(plan["sources"]), len(plan["targets"])
    ty, tx = min(plan["task"][0], h_src - y0), min(plan["task"][1], w_src - x0)
    fx0 = np.zeros((store.out_shape[0], ty, tx), np.float32) if fx0_piece else None
    x0_image = store.x0 if fx0_piece else None
    sheets = {}  # block origin -> (entries per source, boxes, scales)
    for cy, cx, block, offset in _iter_chunks(store, kind, plan, y0, x0, listing):
        hy, hx = block.shape[1:3]
        if fx0 is not None:
            patch = x0_image[:, offset[0]:offset[0] + block.shape[4], offset[1]:offset[1] + block.shape[5]]
            fx0[:, cy - y0:cy - y0 + hy, cx - x0:cx - x0 + hx] = np.tensordot(block, patch, axes=3)
        boxes = filter_boxes(block, offset)
        for i in range(hy):
            q, scales, q_boxes, (top, left) = quantised_row(block, offset, i, boxes[i], fixed_scales)
            y = cy + i
            for j in range(hx):
                x = cx + j
                by, bx = y // b * b, x // b * b
                if (by, bx) not in sheets:
                    n = min(b, h_src - by) * min(b, w_src - bx)
                    sheets[by, bx] = ([[None] * n for _ in range(ns)], np.zeros((n, 4), np.int64),
                                      np.zeros((ns, n, nt), np.float32))
                entries, sheet_boxes, sheet_scales = sheets[by, bx]
                k = (y - by) * min(b, w_src - bx) + (x - bx)
                qt, ql, qh, qw = q_boxes[j]
                sheet_scales[:, k] = scales[:, j]
                sheet_boxes[k] = (qt, ql, qh, qw) if qh else (0, 0, 0, 0)
                crop = q[:, j, :, qt - top:qt - top + qh, ql - left:ql - left + qw]
                for s in range(ns):
                    entries[s][k] = crop[s]
    if fx0 is not None:
        np.savez(fx0_piece + ".tmp.npz", origin=np.array([y0, x0]), values=fx0)
        os.replace(fx0_piece + ".tmp.npz", fx0_piece)
    written, files = 0, 0
    for (by, bx), (entries, boxes, scales) in sheets.items():
        bh, bw = min(b, h_src - by), min(b, w_src - bx)
        for s in range(ns):
            sheet, cell = render.pack_sheet(entries[s], bw)
            name = f"{kind}_{s}_{by}_{bx}"
            meta = {"origin": [by, bx], "size": [bh, bw], "cell": list(cell), "nt": nt,
                    "boxes": boxes.reshape(-1).tolist(),
                    "scales": [float(f"{v:.9g}") for v in scales[s].reshape(-1)]}
            written += render.write_sheet(folder, f"{model}/{name}", meta, sheet)
            files += 1
    n_pixels = sum(len(boxes) for _, boxes, _ in sheets.values())
    return {"filters": n_pixels * len([c for c in plan["sources"] if c != "Σ"]), "bytes": written, "files": files}


@one_blas_thread
def measure_task(store_path: str, kind: str, plan: dict, y0: int, x0: int, listing: str | None = None) -> np.ndarray:
    """Largest |value| per (source, target) plane over the filters of one task region: (n_sources, nt)."""
    store = open_store(store_path)
    peak = np.zeros((len(plan["sources"]), len(plan["targets"])), np.float32)
    for _, _, block, offset in _iter_chunks(store, kind, plan, y0, x0, listing):
        boxes = filter_boxes(block, offset)
        for i in range(block.shape[1]):
            _, scales, _, _ = quantised_row(block, offset, i, boxes[i])
            peak = np.maximum(peak, scales.max(axis=1, initial=0))
    return peak


@one_blas_thread
def image_task(store_path: str, folder: str, model: str, what: str, tile: int = tiles.TILE, pieces=(),
               after=None) -> dict:
    """Write the tiles of one whole image of a store (see :mod:`pipeline.export.tiles`); returns its meta.

    ``what``: "x0" (with its natural colours and the thumbnail), "y0" (with natural colours), "residual", "fx0"
    (F·x0 assembled from the rows tasks' ``pieces``, files written by :func:`render_task`; ``after``: those tasks,
    so that a graph runs this one after them), or "svd<i>" (eigen-output u_i and eigen-input v_i); ``tile``: the
    tile side in pixels. Returns {name: meta} for the manifest, plus 'bytes' and 'files'.
    """
    store = open_store(store_path)
    folder = Path(folder)
    out, written, files = {}, 0, 0

    def add(name, meta):
        nonlocal written, files
        written, files = written + meta.pop("bytes"), files + meta.pop("files")
        out[name] = meta

    if what in ("x0", "y0"):
        image = store.x0 if what == "x0" else store.y0
        add(what, tiles.write_signed(folder, model, what, image, tile))
        if image.shape[0] in (1, 3):
            add("nat_" + what, tiles.write_natural(folder, model, what, image, tile))
            if what == "x0":
                add("thumb", tiles.write_thumbnail(folder, model, image))
    elif what == "residual":
        add(what, tiles.write_signed(folder, model, what, store.residual, tile))
    elif what == "fx0":
        add(what, tiles.write_signed(folder, model, what, contract_pieces(store.out_shape, pieces), tile))
    elif what.startswith("svd"):
        i = int(what[3:])
        svd = store.group["svd"]
        add(f"u{i}", tiles.write_signed(folder, model, f"u{i}", svd["U"][i], tile))
        add(f"v{i}", tiles.write_signed(folder, model, f"v{i}", svd["V"][i], tile))
    else:
        raise ValueError(f"unknown image {what!r}")
    return {"images": out, "bytes": written, "files": files}


def contract_pieces(out_shape, pieces) -> np.ndarray:
    """F·x0 (C_out, H_out, W_out) from the pieces saved by the rows tasks (each output pixel in exactly one)."""
    fx0 = np.zeros(out_shape, np.float32)
    covered = np.zeros(out_shape[1:], np.int32)
    for path in pieces:
        with np.load(path) as piece:
            (y, x), values = piece["origin"], piece["values"]
        fx0[:, y:y + values.shape[1], x:x + values.shape[2]] = values
        covered[y:y + values.shape[1], x:x + values.shape[2]] += 1
    if (covered != 1).any():
        raise ExportError(f"F·x0: {int((covered != 1).sum())} output pixels are not covered once by the rows tasks")
    return fx0


# ---- the whole export ---------------------------------------------------------------------------------------
def model_ids(stores: list[Store]) -> list[str]:
    """Unique folder-safe ids from the stores' model names."""
    ids = []
    for st in stores:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(st.attrs.model or st.path.stem)).strip("-") or "model"
        name, n = base, 2
        while name in ids:
            name, n = f"{base}-{n}", n + 1
        ids.append(name)
    return ids


def check_same_image(stores: list[Store]) -> None:
    """``ExportError`` unless the stores show one image (same image, crop and input size; channels may differ)."""
    first = stores[0]
    for st in stores[1:]:
        for what, key in (("image sha256", lambda a: a.image.sha256), ("crop", lambda a: a.crop)):
            if key(st.attrs) != key(first.attrs):
                raise ExportError(f"{st.path} shows another image than {first.path} ({what} differs); "
                                  f"show them separately")
        if st.in_shape[1:] != first.in_shape[1:]:  # channels may differ (Y-only vs RGB models)
            raise ExportError(f"{st.path}: input size {st.in_shape[1:]} differs from {first.path}'s "
                              f"{first.in_shape[1:]}")


def verification_fields(store: Store) -> dict:
    """A panel's ``verification_status`` ("passed" / "failed" / "unverified"), ``jacobian_exact`` (bool, or
    None when the store does not say) and ``approximations`` ([{op, where, kind}])."""
    from pipeline.verify import status

    attrs = store.attrs
    return {"verification_status": status(store), "jacobian_exact": attrs.get("jacobian_exact"),
            "approximations": list(attrs.get("approximations") or [])}


def _svd_info(store: Store) -> dict | None:
    """The SVD's singular values, residuals and attributes (the eigen-images go to tiles), or None."""
    if not store.has_svd:
        return None
    S, residuals = store.svd_values(), store.svd_residuals()
    return {"k": int(S.shape[0]), "S": [float(v) for v in S],
            "residuals": None if residuals is None else residuals.tolist(), "attrs": store.svd_attrs.to_json()}


#: version of the site layout; part of every task's key, so an export never resumes another layout's tasks
SITE_FORMAT = 2


def _task_key(identity, svd: dict | None, what: str, plan: dict | None, normalise: str) -> str:
    ident = json.dumps([SITE_FORMAT, identity, svd and svd["S"], what, plan, normalise], sort_keys=True,
                       default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


SCHEDULERS = ("threads", "processes", "synchronous", "distributed")


def _run(tasks, scheduler: str, workers: int | None, progress: bool, desc: str, done: int = 0):
    """Compute dask.delayed tasks with a local scheduler or a local ``distributed`` cluster of ``workers``
    processes (``pipeline.parallel.compute_delayed``, ``done`` tasks finished earlier); returns their results in
    order."""
    from pipeline.parallel import compute_delayed

    if scheduler != "distributed" or not tasks:
        return compute_delayed(tasks, scheduler, workers, desc=desc, progress=progress, done=done)
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return compute_delayed(tasks, client, desc=desc, progress=progress, done=done)


def _done(marker: Path, key: str):
    """The result recorded by a finished task's marker when its key matches, else None."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return record.get("result") if isinstance(record, dict) and record.get("key") == key else None


def _finish(result, marker: str, key: str):
    """Record a finished task: its key and (JSON) result, for resuming."""
    render.write_atomic(Path(marker), json.dumps({"key": key, "result": result}))
    return result


def export_site(store_paths, out, *, normalise: str = "filter", scheduler: str = "threads",
                workers: int | None = None, progress: bool = True, sheet_pixels: int = SHEET_PIXELS,
                allow_unverified: bool = False, tile: int = tiles.TILE) -> dict:
    """Render the stores (one image, one panel per model) into the static site folder ``out``.

    ``normalise``: "filter" (each plane at its own ±max) or "global" (one scale per kind, source and target
    channel over all pixels). ``scheduler``: "threads" (the default), "processes" (what ``linterp export`` and
    ``linterp bundle`` use: rendering holds the GIL in zarr's reads and the quantisation, so threads barely
    overlap; 1.34× faster on the full-face EDSR4x store, 2 cores; a script that asks for it needs Python's
    ``if __name__ == "__main__":`` guard, as every use of spawned worker processes does), "synchronous" (local
    dask schedulers) or "distributed" (a local ``distributed`` cluster of ``workers`` processes).
    ``sheet_pixels``: target size of a filter sheet; ``tile``: side of the tiles of whole images. Unfinished
    stores are refused, and so are failed or unverified ones unless ``allow_unverified`` (their panels then carry
    a warning). Returns a summary: seconds, filters, files, bytes and per-model details.
    """
    import dask

    if normalise not in ("filter", "global"):
        raise ExportError(f"normalise must be 'filter' or 'global', not {normalise!r}")
    if scheduler not in SCHEDULERS:
        raise ExportError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
    t_start = time.perf_counter()
    from pipeline.verify import require_exportable

    stores = [open_store(p) for p in store_paths]
    if not stores:
        raise ExportError("no store given")
    for store in stores:
        require_exportable(store, allow_unverified)
    check_same_image(stores)
    out = Path(out)
    for store in stores:  # a site inside a store is not part of it: an SVD or a recomputed shard would replace it
        if out.resolve().is_relative_to(store.path.resolve()):
            raise ExportError(f"--out {out} is inside the store {store.path}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "data").is_dir():
        raise ExportError(f"{out} is not empty and is not a linterp site; choose another --out")
    data = out / "data"
    try:
        data.mkdir(parents=True, exist_ok=True)
        render.write_atomic(data / ".write-test", "")
        (data / ".write-test").unlink()
    except OSError as err:
        raise ExportError(f"{out}: cannot write the site there ({err.strerror or type(err).__name__})") from None

    models, summaries = [], []
    tasks = []  # (model index, marker path, key, delayed task or None when already done, result when done)
    for index, (store, mid) in enumerate(zip(stores, model_ids(stores))):
        folder = data / mid
        done = folder / ".done"
        done.mkdir(parents=True, exist_ok=True)
        attrs, svd = store.attrs, _svd_info(store)
        plans = {kind: plan_kind(store, kind, sheet_pixels) for kind in ("col", "row")}
        listing = listing_token(store.stored_shards())
        fixed = {kind: None for kind in plans}
        if normalise == "global":
            for kind, plan in plans.items():
                peaks = _run([dask.delayed(measure_task)(str(store.path), kind, plan, y, x, listing)
                              for y, x in task_origins(plan)], scheduler, workers, progress,
                             f"export {mid}: {kind} scales")
                fixed[kind] = np.max(peaks, axis=0)
                plan["global_scales"] = fixed[kind].tolist()

        def add(name, plan, make):
            key = _task_key(attrs.get("identity"), svd, name, plan, normalise)
            result = _done(done / name, key)
            task = make() if result is None else None
            tasks.append((index, str(done / name), key, task, result))
            return task

        pieces, rows = [], []
        for kind, plan in plans.items():
            for y, x in task_origins(plan):
                piece = str(done / f"fx0_{y}_{x}.npz") if kind == "row" else None
                task = add(f"{kind}_{y}_{x}", plan, lambda: dask.delayed(render_task)(
                    str(store.path), kind, plan, y, x, str(folder), mid, fixed[kind], listing, piece))
                if piece:
                    pieces.append(piece)
                    rows.append(task)
        images = ["x0", "y0", "residual"] + [f"svd{i}" for i in range(svd["k"] if svd else 0)]
        for what in images:
            add(f"image_{what}_{tile}", None, lambda: dask.delayed(image_task)(
                str(store.path), str(folder), mid, what, tile))
        add(f"image_fx0_{tile}", plans["row"], lambda: dask.delayed(image_task)(
            str(store.path), str(folder), mid, "fx0", tile, pieces, [t for t in rows if t is not None]))
        models.append({"id": mid, "title": str(attrs.model or mid), "store": store.path.name,
                       "attrs": attrs.for_viewer(), **verification_fields(store), "geometry": attrs.geometry,
                       "in": list(store.in_shape), "out": list(store.out_shape), "kinds": plans, "svd": svd, "tile": tile,
                       "natural": {"x0": store.in_shape[0] in (1, 3), "y0": store.out_shape[0] in (1, 3)},
                       **top_class(store)})
        summaries.append({"model": mid, "filters": int(np.prod(store.in_shape) + np.prod(store.out_shape))})

    pending = [(i, dask.delayed(_finish)(task, marker, key)) for i, (_, marker, key, task, _) in enumerate(tasks)
               if task is not None]
    results = [t[4] for t in tasks]
    finished = _run([t for _, t in pending], scheduler, workers, progress, f"export {out.name}",
                    len(tasks) - len(pending))
    for (i, _), result in zip(pending, finished):
        results[i] = result
    for (index, *_), result in zip(tasks, results):
        models[index].setdefault("images", {}).update(result.get("images", {}))

    template = template_dir()
    for name in TEMPLATE_FILES:
        (out / name).write_bytes((template / name).read_bytes())
    manifest = {"format": SITE_FORMAT, "models": models, "lut": render.diverging_lut().tolist(),
                "normalise": normalise, "zero": render.ZERO, "levels": render.LEVELS}
    render.write_atomic(data / "manifest.js",
                        "LINTERP.manifest(" + json.dumps(manifest, separators=(",", ":"), default=str) + ");\n")
    _remove_stale_panels(data, {m["id"] for m in models})
    for model in models:
        _remove_stale_files(data / model["id"], panel_files(model))
    files, size = site_size(out)
    seconds = time.perf_counter() - t_start
    filters = sum(s["filters"] for s in summaries)
    return {"seconds": seconds, "filters": filters, "filters_per_s": filters / seconds if seconds else 0.0,
            "files": files, "bytes": size, "rendered_tasks": len(pending), "tasks": len(tasks), "models": summaries}


def _remove_stale_panels(data: Path, ids: set[str]) -> None:
    """Delete the panel folders (those with export's ``.done`` markers) that an earlier export into the same
    site wrote and this one's manifest no longer shows."""
    for folder in data.iterdir():
        if folder.name not in ids and (folder / ".done").is_dir():
            shutil.rmtree(folder)


def top_class(store: Store) -> dict:
    """``{"top1": k}`` for a classifier's store (an output of 1×1 pixels: one score per channel), k = argmax of its
    scores y0, the class the viewer shows first; ``{}`` for image outputs."""
    if tuple(store.out_shape[1:]) != (1, 1):
        return {}
    return {"top1": int(np.argmax(store.y0[:, 0, 0]))}


#: the names of the data files export writes in a panel's folder (see :func:`panel_files`)
DATA_FILE = re.compile(r"((col|row)_\d+_\d+_\d+|(img|nat)_\w+_\d+_\d+|thumb)\.js")


def panel_files(model: dict) -> set[str]:
    """The data files of one panel, from its manifest entry: a sheet per source channel and block of each kind
    (``kinds``) and the tiles of each image (``images``: x0 / v<i> over the input, the others over the output)."""
    names = {"thumb.js"} if "thumb" in model.get("images", {}) else set()
    for kind, plan in model["kinds"].items():
        _, h, w = plan["src_shape"]
        b = plan["block"]
        names |= {f"{kind}_{s}_{y}_{x}.js" for s in range(len(plan["sources"]))
                  for y in range(0, h, b) for x in range(0, w, b)}
    for name in model.get("images", {}):
        if name == "thumb":
            continue
        image = name.removeprefix("nat_")
        _, h, w = model["in"] if image == "x0" or re.fullmatch(r"v\d+", image) else model["out"]
        prefix = "nat" if name.startswith("nat_") else "img"
        names |= {f"{prefix}_{image}_{y}_{x}.js" for y, x in tiles.tile_origins(h, w, model["tile"])}
    return names


def _remove_stale_files(folder: Path, keep: set[str]) -> None:
    """Delete the data files of a panel's folder that this export did not write: an earlier export into the same
    site with another sheet layout (another version of linterp, another store of that model) or more images."""
    for path in folder.iterdir():
        if path.is_file() and DATA_FILE.fullmatch(path.name) and path.name not in keep:
            path.unlink()


def site_size(out: Path) -> tuple[int, int]:
    """(files, bytes) of a site folder (resume markers aside)."""
    files = [p for p in out.rglob("*") if p.is_file() and ".done" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


__all__ = ["export_site", "ExportError", "StoreError", "channel_labels", "plan_kind", "render_task",
           "image_task", "verification_fields", "read_source_chunk", "filter_boxes", "with_sum"]
