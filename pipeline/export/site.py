"""Export linterp stores as a static site: sprite sheets of every row and column, images, SVD and a manifest.

Site layout (``OUT``)::

    index.html  viewer.js  viewer.css        copied from the viewer template (``template_dir()``)
    data/manifest.js                         LINTERP.manifest({...}): models, shapes, attributes, colour table
    data/<model>/<sheet>.js                  LINTERP.sheet(name, {meta, png}): one 8-bit PNG sprite sheet

Filter sheets: for a *kind* (``col``: columns, one per input pixel, drawn over the output domain; ``row``:
rows, one per output pixel, drawn over the input domain) the source domain is cut into square blocks of
``block`` pixels (see :func:`plan_kind`); one sheet holds, for one *source channel* s (each channel, plus Σ = the sum over channels
when there are several), the filters of all pixels of one block. A filter is cropped to its non-zero box in
the destination domain (the box outside of which all its values quantise to zero, so nothing shown at 8 bits is
lost) and stored as nt planes (each destination channel, plus Σ), each quantised with its
own scale (see :mod:`pipeline.export.render`). Sheet name: ``<kind>_<s>_<y>_<x>`` with (y, x) the block's
top-left source pixel. Sheet meta: ``origin`` (y, x), ``size`` (h, w) of the block, ``cell`` (ch, cw),
``nt``, ``boxes`` (top, left, h, w per pixel, row-major), ``scales`` (nt per pixel).

F is read one source chunk at a time (``F.chunks``), the whole destination domain per read (only the
shards that are stored), so every chunk of F is decompressed once. Each sheet file is written atomically and each task leaves a marker, so a killed
export resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np

from pipeline.export import render
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


def with_sum(planes: np.ndarray) -> np.ndarray:
    """(c, ...) -> (c + 1, ...) with the channel sum appended, or unchanged when c == 1."""
    return planes if planes.shape[0] == 1 else np.concatenate([planes, planes.sum(0, keepdims=True)])


def kind_axes(kind: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """F axes (channel, y, x) of the source and destination domain of a kind."""
    return ((3, 4, 5), (0, 1, 2)) if kind == "col" else ((0, 1, 2), (3, 4, 5))


def read_source_chunk(F, kind: str, sy: int, sx: int, h: int, w: int, regions=None):
    """Filters of the source pixels [sy:sy+h, sx:sx+w] over the destination domain.

    Returns (block, (oy, ox)): float32 block (C_src, h, w, C_dst, bh, bw) holding the destination pixels
    [oy:oy+bh, ox:ox+bw]; F is zero outside them. ``regions``: the stored shards of F
    (``Store.stored_shards()``); when given, only those overlapping the request are read and the block spans
    just their destination extent (the rest of F is zero), else the whole destination domain is read.
    """
    src, dst = kind_axes(kind)
    want = [(0, n) for n in F.shape]
    want[src[1]], want[src[2]] = (sy, sy + h), (sx, sx + w)
    if regions is not None:
        hits = [region for region in regions
                if all(max(r.start, a) < min(r.stop, b) for r, (a, b) in zip(region, want))]
        for ax in dst[1:]:
            want[ax] = (min((r[ax].start for r in hits), default=0), max((r[ax].stop for r in hits), default=0))
        block = np.zeros([b - a for a, b in want], np.float32)
        for region in hits:
            sel = [(max(r.start, a), min(r.stop, b)) for r, (a, b) in zip(region, want)]
            block[tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(sel, want))] = \
                F[tuple(slice(lo, hi) for lo, hi in sel)]
    else:
        block = F[tuple(slice(a, b) for a, b in want)]
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
    region one task reads: whole chunks, ≥ one block) reads every chunk of F exactly once.
    """
    F = store.F
    src, dst = kind_axes(kind)
    c_src, h_src, w_src = (F.shape[a] for a in src)
    c_dst = F.shape[dst[0]]
    ch_y, ch_x = F.chunks[src[1]], F.chunks[src[2]]
    regions, cell = store.stored_shards(), 1
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
    task = [max(block, ch_y), max(block, ch_x)]
    return {"block": int(block), "task": task, "chunk": [int(ch_y), int(ch_x)], "sources": channel_labels(c_src),
            "targets": channel_labels(c_dst), "src_shape": [c_src, h_src, w_src]}


def task_origins(plan: dict) -> list[tuple[int, int]]:
    _, h, w = plan["src_shape"]
    ty, tx = plan["task"]
    return [(y, x) for y in range(0, h, ty) for x in range(0, w, tx)]


# ---- rendering tasks --------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> int:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return len(text.encode("utf-8"))


def _block_planes(block: np.ndarray, offset, box) -> np.ndarray:
    """Planes of pixel (i, j) of a read block, ``block[:, i, j]`` (C_src, C_dst, bh, bw) at destination
    ``offset``: (n_sources, nt, h, w) cropped to its box."""
    t, l, h, w = box
    crop = block[:, :, t - offset[0]:t - offset[0] + h, l - offset[1]:l - offset[1] + w]
    return np.stack([with_sum(p) for p in with_sum(crop)])


def _iter_task(store: Store, kind: str, plan: dict, y0: int, x0: int, regions=None):
    """Yield (y, x, box, planes) for the source pixels of the task region at (y0, x0), reading F one source
    chunk at a time (each chunk of F is read once). ``regions``: ``store.stored_shards()``, if known."""
    _, h_src, w_src = plan["src_shape"]
    ty, tx = plan["task"]
    ch_y, ch_x = plan["chunk"]
    regions = store.stored_shards() if regions is None else regions
    for cy in range(y0, min(y0 + ty, h_src), ch_y):
        for cx in range(x0, min(x0 + tx, w_src), ch_x):
            hy, hx = min(ch_y, h_src - cy), min(ch_x, w_src - cx)
            block, offset = read_source_chunk(store.F, kind, cy, cx, hy, hx, regions)
            boxes = filter_boxes(block, offset)
            for i in range(hy):
                for j in range(hx):
                    yield cy + i, cx + j, boxes[i, j], _block_planes(block[:, i, j], offset, boxes[i, j])


def measure_task(store_path: str, kind: str, plan: dict, y0: int, x0: int, regions=None) -> np.ndarray:
    """Largest |value| per (source, target) plane over the filters of one task region: (n_sources, nt)."""
    store = open_store(store_path)
    peak = np.zeros((len(plan["sources"]), len(plan["targets"])), np.float32)
    for *_, planes in _iter_task(store, kind, plan, y0, x0, regions):
        peak = np.maximum(peak, render.plane_scales(planes))
    return peak


def render_task(store_path: str, kind: str, plan: dict, y0: int, x0: int, folder: str, model: str,
                fixed_scales=None, regions=None) -> dict:
    """Write the sheets of the blocks in one task region (one sheet per block and source channel).

    ``fixed_scales``: None for per-filter normalisation, or (n_sources, nt) global scales. ``regions``:
    the stored shards of F (listed once per export rather than once per task). Returns {'filters', 'bytes', 'files'}.
    """
    store = open_store(store_path)
    _, h_src, w_src = plan["src_shape"]
    b = plan["block"]
    ns, nt = len(plan["sources"]), len(plan["targets"])
    sheets = {}  # block origin -> (entries per source, boxes, scales)
    for y, x, box, planes in _iter_task(store, kind, plan, y0, x0, regions):
        by, bx = y // b * b, x // b * b
        if (by, bx) not in sheets:
            n = min(b, h_src - by) * min(b, w_src - bx)
            sheets[by, bx] = ([[None] * n for _ in range(ns)], np.zeros((n, 4), np.int64),
                              np.zeros((ns, n, nt), np.float32))
        entries, boxes, scales = sheets[by, bx]
        k = (y - by) * min(b, w_src - bx) + (x - bx)
        scales[:, k] = render.plane_scales(planes) if fixed_scales is None else fixed_scales
        q, boxes[k] = render.crop_quantised(render.quantise(planes, scales[:, k]), box)
        for s in range(ns):
            entries[s][k] = q[s]
    written, files = 0, 0
    for (by, bx), (entries, boxes, scales) in sheets.items():
        bh, bw = min(b, h_src - by), min(b, w_src - bx)
        for s in range(ns):
            sheet, cell = render.pack_sheet(entries[s], bw)
            name = f"{kind}_{s}_{by}_{bx}"
            meta = {"origin": [by, bx], "size": [bh, bw], "cell": list(cell), "nt": nt,
                    "boxes": boxes.reshape(-1).tolist(),
                    "scales": [float(f"{v:.9g}") for v in scales[s].reshape(-1)]}
            written += _write_atomic(Path(folder) / f"{name}.js",
                                     render.sheet_script(f"{model}/{name}", meta, render.png_bytes(sheet)))
            files += 1
    n_pixels = sum(len(boxes) for _, boxes, _ in sheets.values())
    return {"filters": n_pixels * len([c for c in plan["sources"] if c != "Σ"]), "bytes": written, "files": files}


def render_images(store_path: str, folder: str, model: str) -> dict:
    """Sheets of the images: ``img_in`` (x0), ``img_out`` (y0, F·x0, residual), natural-colour ``nat_x0`` and
    ``nat_y0`` (C in {1, 3}), and the SVD eigen-images ``svd_v_<i>`` / ``svd_u_<i>`` when present."""
    store = open_store(store_path)
    fx0 = store.y0 - store.residual  # F·x0 + r = f(x0) holds for every store (checked by compute)
    written, files = 0, 0

    def sheet(name, images, per_sheet=None):
        nonlocal written, files
        nt = with_sum(images[0]).shape[0]
        per_sheet = per_sheet or len(images)
        for start in range(0, len(images), per_sheet):
            planes = [with_sum(im) for im in images[start:start + per_sheet]]
            scales = [render.plane_scales(p) for p in planes]
            entries = [render.quantise(p, s) for p, s in zip(planes, scales)]
            img, cell = render.pack_sheet(entries, 1)
            full = f"{name}_{start // per_sheet}" if per_sheet < len(images) else name
            meta = {"cell": list(cell), "nt": nt, "count": len(entries), "first": start,
                    "scales": [float(f"{v:.9g}") for s in scales for v in s]}
            written += _write_atomic(Path(folder) / f"{full}.js",
                                     render.sheet_script(f"{model}/{full}", meta, render.png_bytes(img)))
            files += 1

    sheet("img_in", [store.x0])
    sheet("img_out", [store.y0, fx0, store.residual])
    for name, image in (("nat_x0", store.x0), ("nat_y0", store.y0)):
        if image.shape[0] in (1, 3):
            q, lo, hi = render.natural(image)
            written += _write_atomic(Path(folder) / f"{name}.js", render.sheet_script(
                f"{model}/{name}", {"lo": lo, "hi": hi, "channels": image.shape[0]}, render.png_bytes(q)))
            files += 1
    if store.has_svd:
        _, U, V = store.svd()
        for name, vecs in (("svd_v", V), ("svd_u", U)):
            per = max(1, SHEET_PIXELS // (vecs[0].size + vecs[0][0].size))
            sheet(name, list(vecs), per_sheet=min(per, len(vecs)))
    return {"bytes": written, "files": files}


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
    if not store.has_svd:
        return None
    S, residuals = store.svd_values(), store.svd_residuals()
    out_size = int(np.prod(store.out_shape))
    per = max(1, SHEET_PIXELS // (out_size + out_size // store.out_shape[0]))
    return {"k": int(S.shape[0]), "S": [float(v) for v in S],
            "residuals": None if residuals is None else residuals.tolist(), "per_sheet": min(per, len(S)),
            "attrs": store.svd_attrs.to_json()}


def _task_key(store: Store, what: str, plan: dict | None, normalise: str) -> str:
    ident = json.dumps([store.attrs.identity, store.has_svd and _svd_info(store)["S"], what, plan,
                        normalise], sort_keys=True, default=str)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


SCHEDULERS = ("threads", "processes", "synchronous", "distributed")


def _run(tasks, scheduler: str, workers: int | None, progress: bool, desc: str):
    """Compute dask.delayed tasks with a local scheduler or a local ``distributed`` cluster, reporting each
    finished task through ``pipeline.progress`` under ``desc``; returns their results in order."""
    import dask

    from pipeline.progress import dask_progress, track_futures

    if not tasks:
        return []
    if scheduler == "distributed":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            futures = client.compute(list(tasks))
            track_futures(futures, desc, unit="tasks", enabled=progress)
            return client.gather(futures)
    kwargs = {"scheduler": scheduler}
    if workers and scheduler != "synchronous":
        kwargs["num_workers"] = workers
    with dask_progress(desc, len(tasks), unit="tasks", enabled=progress):
        return list(dask.compute(*tasks, **kwargs))


def export_site(store_paths, out, *, normalise: str = "filter", scheduler: str = "threads",
                workers: int | None = None, progress: bool = True, sheet_pixels: int = SHEET_PIXELS,
                allow_unverified: bool = False) -> dict:
    """Render the stores (one image, one panel per model) into the static site folder ``out``.

    ``normalise``: "filter" (each plane at its own ±max) or "global" (one scale per kind, source and target
    channel over all pixels). ``scheduler``: "threads", "processes", "synchronous" (local dask schedulers) or
    "distributed" (a local ``distributed`` cluster of ``workers`` processes). Unfinished stores are refused,
    and so are failed or unverified ones unless ``allow_unverified`` (their panels then carry a warning).
    Returns a summary: seconds, filters, files, bytes and per-model details.
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
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "data").is_dir():
        raise ExportError(f"{out} is not empty and is not a linterp site; choose another --out")
    data = out / "data"
    try:
        data.mkdir(parents=True, exist_ok=True)
        _write_atomic(data / ".write-test", "")
        (data / ".write-test").unlink()
    except OSError as err:
        raise ExportError(f"{out}: cannot write the site there ({err.strerror or type(err).__name__})") from None

    models, summaries = [], []
    todo, todo_info = [], []
    for store, mid in zip(stores, model_ids(stores)):
        folder = data / mid
        (folder / ".done").mkdir(parents=True, exist_ok=True)
        plans = {kind: plan_kind(store, kind, sheet_pixels) for kind in ("col", "row")}
        regions = dask.delayed(store.stored_shards(), pure=True)  # one graph node shared by the tasks
        fixed = {kind: None for kind in plans}
        if normalise == "global":
            for kind, plan in plans.items():
                peaks = _run([dask.delayed(measure_task)(str(store.path), kind, plan, y, x, regions)
                              for y, x in task_origins(plan)], scheduler, workers, progress,
                             f"export {mid}: {kind} scales")
                fixed[kind] = np.max(peaks, axis=0)
                plan["global_scales"] = fixed[kind].tolist()
        for kind, plan in plans.items():
            for y, x in task_origins(plan):
                todo.append(dask.delayed(render_task)(str(store.path), kind, plan, y, x, str(folder), mid,
                                                       fixed[kind], regions))
                todo_info.append((folder, f"{kind}_{y}_{x}", _task_key(store, kind, plan, normalise)))
        todo.append(dask.delayed(render_images)(str(store.path), str(folder), mid))
        todo_info.append((folder, "images", _task_key(store, "images", None, normalise)))
        attrs = store.attrs
        models.append({"id": mid, "title": str(attrs.model or mid), "store": store.path.name,
                       "attrs": attrs.for_viewer(), **verification_fields(store),
                       "geometry": attrs.geometry, "in": list(store.in_shape), "out": list(store.out_shape),
                       "kinds": plans, "svd": _svd_info(store),
                       "natural": {"x0": store.in_shape[0] in (1, 3), "y0": store.out_shape[0] in (1, 3)}})
        summaries.append({"model": mid, "filters": int(np.prod(store.in_shape) + np.prod(store.out_shape))})

    # resume: skip tasks whose marker says they finished with the same inputs and parameters
    pending = [(t, info) for t, info in zip(todo, todo_info)
               if not ((info[0] / ".done" / info[1]).exists()
                       and (info[0] / ".done" / info[1]).read_text() == info[2])]

    def finish(result, info):
        folder, name, key = info
        _write_atomic(folder / ".done" / name, key)
        return result

    wrapped = [dask.delayed(finish)(t, info) for t, info in pending]
    _run(wrapped, scheduler, workers, progress, f"export {out.name}")

    template = template_dir()
    for name in TEMPLATE_FILES:
        (out / name).write_bytes((template / name).read_bytes())
    manifest = {"format": 1, "models": models, "lut": render.diverging_lut().tolist(), "normalise": normalise,
                "zero": render.ZERO, "levels": render.LEVELS}
    _write_atomic(data / "manifest.js",
                  "LINTERP.manifest(" + json.dumps(manifest, separators=(",", ":"), default=str) + ");\n")
    files, size = site_size(out)
    seconds = time.perf_counter() - t_start
    filters = sum(s["filters"] for s in summaries)
    return {"seconds": seconds, "filters": filters, "filters_per_s": filters / seconds if seconds else 0.0,
            "files": files, "bytes": size, "rendered_tasks": len(pending), "tasks": len(todo), "models": summaries}


def site_size(out: Path) -> tuple[int, int]:
    """(files, bytes) of a site folder (resume markers aside)."""
    files = [p for p in out.rglob("*") if p.is_file() and ".done" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


__all__ = ["export_site", "ExportError", "StoreError", "channel_labels", "plan_kind", "render_task",
           "render_images", "read_source_chunk", "filter_boxes"]
