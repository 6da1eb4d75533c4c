"""Materialise F(x0) into a store with a dask graph: one task per input tile (columns) or per block of rows.

Columns (forward mode) are the default for image-to-image networks: a batch of one-hot inputs goes through the
frozen linear network and each result is a whole column ``F[..., c, y, x]``. Rows (transpose mode, one-hot
outputs through ``Fᵀ``) are used where they need fewer batched passes, e.g. classifiers: one row per class.
``choose_mode`` makes the choice from the shapes, the batch and the receptive radius.

Locality: when the network has a finite receptive radius (``li.receptive_radius``), the columns of an input
tile are computed on ``li.window(tile)``, the frozen network cropped around the tile, so the cost per column
stops growing once the image is larger than the window. Networks with global operations use the full image.

Each task writes exactly the F shards of its own input tile (the store's shards match the task tiles, see
``pipeline.store.layout``) and then marks itself done in the store's ledger, so tasks need no locks and a
killed run resumes where it stopped. Workers never receive the interpreter: each process (or GPU thread)
rebuilds ``interpret(model, x0)`` once from a small picklable ``Source`` and caches it.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from .compact import Compaction, CompactionError, compact_block
from .parallel import compute_delayed
from .shard_io import write_box
from .store import Store, create_store, identity_mismatch, layout, open_store, recorded_identity

#: Default columns (or rows) per forward (transpose) pass. Part of a store's identity: batch composition
#: changes the last bits of convolution results, and a resumed store must equal an uninterrupted run.
DEFAULT_BATCH = 16
#: Side (input pixels) of the squares of a task's tile whose columns share one window (see ``tile_columns``).
WINDOW_TILE = 2
#: Bytes of F one task may hold in memory before writing it; bounds the default tile size.
TASK_BYTES = 512 * 2**20
#: glibc arenas at most (``tune_malloc``): one per core (the default worker count), shared beyond that.
MALLOC_ARENAS = max(2, os.cpu_count() or 1)
#: Worker threads per GPU (local schedulers): while one thread's tile runs on the GPU, another compresses and writes
#: its block on the host (with one, the GPU waited for every write: 237 columns/s end to end on an H200 against
#: 408 for the tiles alone)
GPU_WORKERS = 2
#: Local dask schedulers ("sync" runs tasks one by one in this thread, for debugging and profiling).
LOCAL = ("threads", "processes", "sync")
#: Address prefixes of dask.distributed schedulers.
REMOTE = ("tcp://", "tls://", "ucx://", "inproc://")
#: Identity fields that the plan chooses: ``--mode auto`` and a default tile take them from the store being resumed.
PLAN_FIELDS = ("mode", "tile")


@dataclass(frozen=True)
class Source:
    """Everything a worker needs to rebuild the interpreter: small and picklable.

    ``build``: a picklable zero-argument callable returning the model (e.g. ``functools.partial(
    pipeline.models.build, name, weights)``); ``x0``: float32 (1, C, H, W); ``key``: a string naming this
    (model, weights, image, crop), used to cache the interpreter per process.
    """

    build: Callable[[], torch.nn.Module]
    x0: np.ndarray
    key: str


# ---- per-process engine cache ---------------------------------------------------------------------------

_ENGINES: dict[tuple[str, str], object] = {}
_ENGINES_LOCK = threading.Lock()
_THREAD = threading.local()
_GPUS = itertools.count()  # hands out GPU numbers to worker threads


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds so large conv buffers are reused, not returned to the OS, and cap
    its arenas at ``MALLOC_ARENAS``.

    See DESIGN.md's performance notes (≈1.45× on large batches). Without the cap every thread that allocates
    (dask workers, zarr's codec threads) gets an arena of its own that keeps what it freed, and a bundle's peak
    RSS grew phase by phase (2.8 GB for the full-face EDSR4x bundle). Returns False where glibc is absent.
    """
    libc = _libc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return bool(libc.mallopt(m_mmap_threshold, 2**30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
                and libc.mallopt(m_arena_max, MALLOC_ARENAS))


def release_memory() -> None:
    """Give the free memory of every glibc arena back to the OS (``malloc_trim``), at the end of a phase: the
    thresholds ``tune_malloc`` raises keep freed buffers for reuse within one, not for the next phase."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def full_precision(device: str) -> None:
    """On CUDA, turn TensorFloat-32 off for convolutions and matmuls (torch's default lets cuDNN use it, which
    keeps 10 mantissa bits: F would be accurate to about 1e-3 and fail verification)."""
    if str(device).startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


#: the devices a run takes besides "auto": cpu, cuda (every visible GPU), cuda:N (GPU N)
DEVICE_FORM = re.compile(r"cpu|cuda(?::(\d+))?")


def resolve_device(device) -> str:
    """The device a run uses, as a string: "auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu"; "cuda"
    (every visible GPU: worker threads take them round robin); "cuda:N" (GPU N only). ``device``: one of those
    strings or a ``torch.device``. A GPU that torch cannot see is a one-line ``ValueError`` (no GPU at all, or
    an index beyond the count, named)."""
    name = str(device) if isinstance(device, torch.device) else device
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = DEVICE_FORM.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")
    if name == "cpu":
        return name
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch")
    if match.group(1) is None:
        return "cuda"
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"--device {name}: torch sees {count} CUDA GPU{'s' * (count != 1)} "
                         f"(cuda:0{f' to cuda:{count - 1}' * (count > 1)})")
    return f"cuda:{index}"


def _thread_device(device: str) -> str:
    """The torch device of this worker: "cpu", the GPU named ("cuda:N"), or for "cuda" a GPU per worker thread,
    round robin (cuda:0, cuda:1, ...)."""
    if device != "cuda":
        return device
    if not hasattr(_THREAD, "gpu"):
        _THREAD.gpu = next(_GPUS) % max(1, torch.cuda.device_count())
    return f"cuda:{_THREAD.gpu}"


def engine(source: Source, device: str = "cpu"):
    """``interpret(source.build(), source.x0)`` on ``device``, built once per process and device."""
    from .interpreter import interpret

    dev = _thread_device(device)
    full_precision(dev)
    key = (source.key, dev)
    with _ENGINES_LOCK:
        li = _ENGINES.get(key)
        if li is None:
            if not _ENGINES:
                tune_malloc()
            # one torch thread while building: random initialisations (QR) and the recorded state depend on
            # the thread count in their last bits, and every worker must rebuild the same interpreter
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model = source.build().eval().to(dev)
                with torch.no_grad():
                    li = interpret(model, torch.as_tensor(source.x0, device=dev))
            finally:
                torch.set_num_threads(threads)
            _ENGINES[key] = li
    return li


# ---- geometry -------------------------------------------------------------------------------------------

def out_shape3(li) -> tuple[int, int, int]:
    """The output shape as stored: (C, H, W), or (N, 1, 1) for vector outputs."""
    shape = tuple(li.output.shape[1:])
    if len(shape) == 3:
        return shape
    if len(shape) == 1:
        return (shape[0], 1, 1)
    raise ValueError(f"outputs of shape {shape} cannot be stored (expected (C,H,W) or (N,))")


def choose_mode(li, in_shape, tile: int, batch: int = DEFAULT_BATCH) -> str:
    """"columns" or "rows", whichever needs fewer batched passes of the network, each weighted by its pixels.

    Both modes push one-hot vectors through the network ``batch`` at a time, so a pass is counted whole even when
    it holds fewer vectors: its fixed costs (and, for rows, a task and a shard file per output pixel) dominate
    small networks. An RGB → grey network (8 features) on 24×24: 4.4 s in 576 rows tasks of one vector each
    (one transpose pass 0.25 ms, the rest per-task work), 0.5 s in 108 column passes of 16.
    Columns: ⌈C_in·H·W / batch⌉ passes over the window of a tile (the whole image without a finite radius).
    Rows: ⌈C_out / batch⌉ transpose passes over the whole image per output pixel (no windows for transposes).
    So classifiers (a few class scores) get rows and image outputs get columns unless C_in exceeds ``batch``.
    """
    c_in, h, w = in_shape
    c_out, h_out, w_out = out_shape3(li)
    area = h * w
    radius = li.receptive_radius
    win = area if radius is None else min(h, tile + 2 * radius) * min(w, tile + 2 * radius)
    columns_cost = math.ceil(c_in * area / batch) * win
    rows_cost = math.ceil(c_out / batch) * h_out * w_out * area
    return "rows" if rows_cost < columns_cost else "columns"


def default_tile(li, in_shape, out_shape, mode: str) -> int:
    """Largest tile in {32, 16, 8, 4} whose task block of F fits in ``TASK_BYTES`` (rows: 16 per task)."""
    if mode == "rows":
        return 16
    c_in, h, w = in_shape
    c_out, ho, wo = out_shape
    sy, sx = ho / h, wo / w
    radius = li.receptive_radius
    for tile in (32, 16, 8, 4):
        side_y = h if radius is None else min(h, tile + 2 * radius + 2 * tile)  # + alignment to shard grid
        side_x = w if radius is None else min(w, tile + 2 * radius + 2 * tile)
        block = 4 * c_out * side_y * sy * side_x * sx * c_in * min(tile, h) * min(tile, w)
        if block <= TASK_BYTES:
            return tile
    return 4


def _aligned(start: int, stop: int, step: int, limit: int) -> tuple[int, int]:
    """[start, stop) widened to multiples of ``step`` (clipped to ``limit``)."""
    return (start // step) * step, min(limit, -(-stop // step) * step)


# ---- the work of one task -------------------------------------------------------------------------------

def channels_last(value):
    """A recorded state (tensor, or dicts / tuples / lists of them) with its 4-D floating-point tensors in
    ``torch.channels_last`` memory format: the same values, laid out as oneDNN's convolutions prefer them.

    Column passes on CPU are ≈1.3× faster when the impulses and the masks / gains they meet are channels-last
    (the convolutions then pick their channels-last kernels; measured in ``benchmarks/bench_compute.py``).
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, dict):
        return {k: channels_last(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(channels_last(v) for v in value)
    return value


def column_pass(li, box: tuple[int, int, int, int]):
    """(forward, in_box, out_box) for the columns of the input tile ``box`` = (top, left, h, w).

    ``forward(v)`` maps impulses (B, C_in, in_box h, in_box w) to (B, *out over out_box): the frozen network
    cropped to the tile's window (``li.window``), or the whole network when it has no finite receptive radius or
    the window is the whole image, with its recorded state in channels-last layout (see ``channels_last``; the
    whole network's is converted once per interpreter). Boxes are (top, left, height, width), input and output
    pixels.
    """
    c_out, h_out, w_out = out_shape3(li)
    h_in, w_in = li.x0.shape[-2:]
    win = li.window(box) if li.receptive_radius is not None and li.output.dim() == 4 else None
    if win is None or tuple(win.in_box) == (0, 0, h_in, w_in):
        cached = li.__dict__.get("_column_pass")
        if cached is None:
            sites = {n: replace(s, state=channels_last(s.state)) for n, s in li.sites.items()}
            statics = {n: channels_last(v) for n, v in li.static.items()}
            cached = li.__dict__["_column_pass"] = (sites, statics)
        sites, statics = cached

        def forward(v):
            with torch.no_grad():
                return li._forward(v, sites=sites, statics=statics)
        return forward, (0, 0, h_in, w_in), (0, 0, h_out, w_out)
    win = replace(win, sites={n: replace(s, state=channels_last(s.state)) for n, s in win.sites.items()},
                  statics={n: channels_last(v) for n, v in win.statics.items()})
    return win.forward, tuple(win.in_box), tuple(win.out_box)


def sub_tiles(box: tuple[int, int, int, int], side: int) -> list[tuple[int, int, int, int]]:
    """The tile ``box`` = (top, left, h, w) cut into squares of ``side`` pixels (smaller at its far edges)."""
    top, left, h, w = box
    return [(y, x, min(side, top + h - y), min(side, left + w - x))
            for y in range(top, top + h, side) for x in range(left, left + w, side)]


def tile_columns(li, in_shape: tuple[int, int, int], box: tuple[int, int, int, int], *,
                 batch: int = DEFAULT_BATCH,
                 align: tuple[int, int] = (1, 1)) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """All columns of the input tile ``box`` = (top, left, h, w) of an input of shape ``in_shape`` (C, H, W).

    Returns (region, block): ``region`` = (top, left, height, width) in output pixels, aligned to ``align``
    (the store's shard size) and covering every non-zero of these columns; ``block`` float32 of shape
    (C_out, height, width, C_in, h, w) with ``block[..., c, y, x]`` = column (c, top + y, left + x) there.

    Networks with a finite receptive radius compute the columns of each ``WINDOW_TILE``-pixel square of the tile
    on that square's own window (tile + radius on every side: the smaller the square, the smaller the window;
    1.25× fewer pixel-passes than windows of 8-pixel tiles for edsr-small-x4 on 96×96); where every square's
    window is the same (the whole image), the tile's columns go through it together, ``batch`` at a time.
    """
    top, left, h, w = box
    c_in = in_shape[0]
    c_out, h_out, w_out = out_shape3(li)
    windowed = li.receptive_radius is not None and li.output.dim() == 4
    passes = [(sub,) + column_pass(li, sub) for sub in (sub_tiles(box, WINDOW_TILE) if windowed else [box])]
    if len({p[2] for p in passes}) == 1:  # one window for every square (the whole image): one pass, full batches
        passes = [(box,) + passes[0][1:]]
    r_top, r_bottom = _aligned(min(p[3][0] for p in passes), max(p[3][0] + p[3][2] for p in passes), align[0], h_out)
    r_left, r_right = _aligned(min(p[3][1] for p in passes), max(p[3][1] + p[3][3] for p in passes), align[1], w_out)
    device = li.output.device
    # the block is assembled where the network runs and reaches the host in one copy (on a GPU: one DMA into
    # page-locked memory that torch's host allocator recycles), instead of one pageable copy, a fresh host
    # buffer and a host-side scatter per batch (on an H200: 0.5 s of host time per 192 columns, ten times the
    # network's own time)
    shape = (c_out, r_bottom - r_top, r_right - r_left, c_in * h * w)  # columns in (c, y, x) order
    block = (torch.from_numpy(np.zeros(shape, np.float32)) if device.type == "cpu"  # pages never written stay unmapped
             else torch.zeros(shape, dtype=torch.float32, device=device))
    for (s_top, s_left, s_h, s_w), forward, in_box, out_box in passes:
        cols = [(c, y, x) for c in range(c_in) for y in range(s_top, s_top + s_h) for x in range(s_left, s_left + s_w)]
        oy, ox = out_box[0] - r_top, out_box[1] - r_left
        for start in range(0, len(cols), batch):
            part = torch.tensor(cols[start:start + batch], dtype=torch.long).reshape(-1, 3)
            n = len(part)
            v = torch.zeros((n, c_in, in_box[2], in_box[3]), dtype=li.x0.dtype, device=device)
            v[torch.arange(n), part[:, 0], part[:, 1] - in_box[0], part[:, 2] - in_box[1]] = 1.0
            out = forward(v.contiguous(memory_format=torch.channels_last))
            # columns last, made contiguous where the network ran, so that the copy below moves rows of n floats
            out = out.reshape(n, c_out, out_box[2], out_box[3]).permute(1, 2, 3, 0).float().contiguous()
            index = ((part[:, 0] * h + part[:, 1] - top) * w + part[:, 2] - left).tolist()
            target = block[:, oy:oy + out_box[2], ox:ox + out_box[3]]
            for k, first, length in _runs(index):  # a slice copy per run of consecutive columns (an index_put,
                target[..., first:first + length] = out[..., k:k + length]  # or a 6-D view copy, is 4x slower)
    return (r_top, r_left, r_bottom - r_top, r_right - r_left), host_array(block).reshape(
        (c_out, r_bottom - r_top, r_right - r_left, c_in, h, w))


def _runs(index: list[int]) -> list[tuple[int, int, int]]:
    """(position, first, length) of each maximal run of consecutive values in ``index``."""
    runs = []
    for k, i in enumerate(index):
        if runs and i == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((k, i, 1))
    return runs


def host_array(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host: a view of a CPU tensor; from a CUDA device one copy into
    page-locked memory (recycled by torch's caching host allocator once the array is gone)."""
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t).numpy()
    return t.cpu().numpy()


def row_block(li, channels: range, y: int, x: int, *, batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Rows ``F[c, y, x]`` for c in ``channels``, by transposes of one-hot outputs: (len, C_in, H_in, W_in)."""
    out = tuple(li.output.shape[1:])
    rows = []
    for start in range(0, len(channels), batch):
        part = channels[start:start + batch]
        u = torch.zeros((len(part),) + out, dtype=li.output.dtype, device=li.output.device)
        for b, c in enumerate(part):
            u[(b, c, y, x) if len(out) == 3 else (b, c)] = 1.0
        with torch.no_grad():
            rows.append(li.transpose(u).float().cpu().numpy())
    return np.concatenate(rows)


# ---- tasks ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How F is split into tasks: ``mode`` ("columns"/"rows"), ``tile``, ``batch``, the store's F ``shards``
    and ``chunks``, the task grid ``tasks`` and the shapes (C, H, W) of input and (stored) output."""

    mode: str
    tile: int
    batch: int
    shards: tuple
    chunks: tuple
    tasks: tuple
    in_shape: tuple
    out_shape: tuple

    def input_tile(self, index: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a columns task's input tile."""
        ty, tx = index
        _, h, w = self.in_shape
        top, left = ty * self.shards[4], tx * self.shards[5]
        return top, left, min(self.shards[4], h - top), min(self.shards[5], w - left)


def make_plan(li, in_shape, *, mode: str = "auto", tile: int | None = None,
              batch: int = DEFAULT_BATCH) -> Plan:
    """The task split for this interpreter (``mode`` "auto" = ``choose_mode``, ``tile`` None = ``default_tile``)."""
    in_shape, out_shape = tuple(int(n) for n in in_shape), out_shape3(li)
    if mode == "auto":
        mode = choose_mode(li, in_shape, tile or 16, int(batch))
    if mode not in ("columns", "rows"):
        raise ValueError(f"unknown mode {mode!r} (auto, columns or rows)")
    tile = int(tile or default_tile(li, in_shape, out_shape, mode))
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, not {tile}")
    shards, chunks, tasks = layout(in_shape, out_shape, tile, mode)
    return Plan(mode, tile, int(batch), shards, chunks, tasks, in_shape, out_shape)


def recorded_plan(out, identity: dict) -> dict:
    """``PLAN_FIELDS`` ({"mode": …, "tile": …}) as recorded in the store at ``out`` when its identity equals
    ``identity`` (every field but those) — a store that an older linterp's ``choose_mode`` / ``default_tile``
    planned otherwise then resumes; {} when there is no readable linterp store there or it holds other inputs
    (``create_store`` then refuses it or starts afresh, as it says)."""
    found = recorded_identity(out)
    if found is None:
        return {}
    others = {key: value for key, value in found.items() if key not in PLAN_FIELDS}
    if identity_mismatch(others, json.loads(json.dumps(identity))):
        return {}
    return {key: found[key] for key in PLAN_FIELDS if key in found}


def run_task(source: Source, device: str, path: str, plan: Plan, index: tuple, threads: int | None,
             compaction: Compaction = Compaction()) -> float:
    """Compute one task's part of F, write it (only this task's shards; for compact stores, F truncated and rounded
    as ``compaction`` says and the error figures of its columns) and mark it done; returns seconds.

    The freed memory goes back to the OS after each task (``release_memory``): tasks of other window shapes would
    otherwise fragment the heap that ``tune_malloc`` keeps, and the peak RSS grew over the run."""
    start = time.perf_counter()
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _write_task(engine(source, device), path, plan, index, compaction)
    release_memory()
    return time.perf_counter() - start


def _write_task(li, path: str, plan: Plan, index: tuple, compaction: Compaction) -> None:
    """The body of ``run_task``."""
    store = open_store(path, mode="r+")
    if plan.mode == "columns":
        box = top, left, h, w = plan.input_tile(index)
        region, block = tile_columns(li, plan.in_shape, box, batch=plan.batch, align=plan.shards[1:3])
        r_top, r_left, r_h, r_w = region
        if compaction.active:
            block, figures = compact_block(block, region, box, plan.in_shape, plan.out_shape, compaction)
            store.write_errors(box, figures)
        shards = write_box(store.F, (slice(None), slice(r_top, r_top + r_h), slice(r_left, r_left + r_w), slice(None),
                                     slice(top, top + h), slice(left, left + w)), block)
    else:
        block_c, y, x = index
        step = plan.shards[0]
        channels = range(block_c * step, min(plan.out_shape[0], (block_c + 1) * step))
        rows = row_block(li, channels, y, x, batch=plan.batch)
        shards = write_box(store.F, (slice(channels.start, channels.stop), slice(y, y + 1), slice(x, x + 1))
                           + (slice(None),) * 3, rows[:, None, None])
    store.mark_done(index, shards=shards)  # the count lets `linterp verify` find lost shards




# ---- the whole run --------------------------------------------------------------------------------------

def compute(out, source: Source, *, identity: dict, attrs: dict | None = None, tile: int | None = None,
            mode: str = "auto", batch: int = DEFAULT_BATCH, scheduler="threads", workers: int | None = None,
            device: str = "auto", progress: bool = True, verify_samples: int | None = None, dtype: str = "float32",
            support_tol: float | None = None) -> Store:
    """Compute F(x0) of ``source`` into the store ``out`` (created, or resumed when it matches) and verify it.

    ``identity``: what must match to resume (model, weights sha256, image sha256, crop ...; mode, tile, batch
    and shapes are added; ``mode`` "auto" and ``tile`` None take the mode and tile of a store at ``out`` made from
    the same inputs, see ``recorded_plan``); ``attrs``: further group attributes (``pipeline.store.StoreAttrs``
    fields, e.g. from ``pipeline.sources.model_source``). ``scheduler``: "threads" (default),
    "processes", "tcp://HOST:PORT" or a ``distributed.Client``. ``workers``: local worker count (default:
    one per core on CPU, ``GPU_WORKERS`` threads per GPU with CUDA). ``dtype`` ("float32", "float16",
    "bfloat16") and ``support_tol`` (None or a fraction): a compact store (see ``pipeline.compact``; columns
    stores only); both are part of the store's identity when set. Returns the completed, verified store.

    A resumed run first recomputes finished tasks whose shards do not decode or are missing. The run ends
    with the checks of ``pipeline.verify`` against a freshly built interpreter (``verify_samples`` sampled
    rows/columns per check): the store is marked ``complete`` only when they pass; otherwise it is marked
    failed with its figures and ``VerificationError`` (one line) is raised.
    """
    from . import verify as checks

    if isinstance(scheduler, str) and scheduler.startswith(REMOTE):
        from distributed import Client

        # connected before any store is written: an unreachable cluster fails without leaving an empty store
        with Client(scheduler) as client:
            return compute(out, source, identity=identity, attrs=attrs, tile=tile, mode=mode, batch=batch,
                           scheduler=client, workers=workers, device=device, progress=progress,
                           verify_samples=verify_samples, dtype=dtype, support_tol=support_tol)
    compaction = Compaction(dtype, support_tol)
    tune_malloc()
    device = resolve_device(device)
    if isinstance(scheduler, str) and scheduler not in LOCAL:
        raise ValueError(f"unknown scheduler {scheduler!r} (threads, processes or tcp://HOST:PORT)")
    if device.startswith("cuda") and scheduler == "processes":
        raise ValueError("--device cuda runs worker threads that share the GPUs: use --scheduler threads, or a "
                         "distributed cluster with one worker per GPU")
    local = isinstance(scheduler, str) and scheduler in LOCAL
    cores = os.cpu_count() or 1
    if local and not workers:
        workers = {"cpu": cores, "cuda": torch.cuda.device_count() * GPU_WORKERS}.get(device, GPU_WORKERS)
    threads = max(1, cores // workers) if local and device == "cpu" else None  # torch threads per worker
    started = time.perf_counter()
    li = engine(source, device)
    inputs = dict(identity, batch=int(batch), in_shape=[int(n) for n in source.x0.shape[1:]],
                  out_shape=list(li.output.shape[1:]))
    if compaction.active:  # a compact store holds other values: never resumed from, or into, an exact one
        inputs.update(dtype=compaction.dtype, support_tol=compaction.support_tol)
    # auto choices resume a store at out as it was planned; explicit ones that differ are refused by create_store
    recorded = recorded_plan(out, inputs) if mode == "auto" or tile is None else {}
    plan = make_plan(li, source.x0.shape[1:], mode=recorded.get("mode", "auto") if mode == "auto" else mode,
                     tile=tile or recorded.get("tile"), batch=batch)
    if compaction.active and plan.mode != "columns":
        raise CompactionError("--dtype float16/bfloat16 and --support-tol need a store computed by columns; this "
                              "one is computed by rows (--mode columns, or the default float32 store)")
    ident = dict(inputs, mode=plan.mode, tile=plan.tile)
    meta = dict(attrs or {}, mode=plan.mode, tile=plan.tile, receptive_radius=li.receptive_radius,
                output_shape=list(li.output.shape[1:]), versions=_versions(), dtype=compaction.dtype,
                support_tol=compaction.support_tol, jacobian_exact=li.jacobian_exact,
                approximations=li.approximations)
    store = create_store(out, identity=ident, attrs=meta, x0=source.x0, y0=li.output.detach().cpu().numpy(),
                         residual=li.residual.detach().cpu().numpy(), shards=plan.shards,
                         chunks=plan.chunks, tasks=plan.tasks, dtype=compaction.dtype,
                         compact=compaction.active)
    done = store.done_tasks()
    if done and not store.complete:  # resuming: recompute tasks whose shards were damaged or lost
        store.unmark(checks.damaged_tasks(store, progress=progress))
        done = store.done_tasks()
    elif store.complete and (lost := checks.lost_tasks(store)):  # finished earlier, shards lost since: redo
        store.update_attrs(complete=False)
        store.unmark(lost)
        done = store.done_tasks()
    todo = [ix for ix in np.ndindex(*plan.tasks) if ix not in done]
    if store.complete and not todo:
        return store  # finished and verified earlier
    from dask import delayed

    path = str(store.path.absolute())  # workers of a cluster may run in another folder
    calls = [delayed(run_task, pure=False)(source, device, path, plan, ix, threads, compaction,
                                           dask_key_name=f"task-{'-'.join(map(str, ix))}-{source.key[:12]}")
             for ix in todo]
    saved = torch.get_num_threads()
    try:
        seconds = compute_delayed(calls, scheduler, workers, desc=f"compute {store.path.name}", progress=progress,
                                  done=int(np.prod(plan.tasks)) - len(todo))
    finally:
        torch.set_num_threads(saved)
        with _ENGINES_LOCK:  # the workers' interpreters (recorded state, windows) are not needed after the tasks
            for key in [k for k in _ENGINES if k[0] == source.key]:
                del _ENGINES[key]
        release_memory()
    elapsed = time.perf_counter() - started
    n_vectors = int(np.prod(plan.in_shape if plan.mode == "columns" else plan.out_shape))
    previous = store.attrs.timings
    timings = {"runs": previous.get("runs", 0) + 1, "last_run_seconds": elapsed,
               "last_run_tasks": len(todo), "task_seconds_total": previous.get("task_seconds_total", 0.0)
               + float(sum(seconds)), "vectors": n_vectors, "device": device,
               "scheduler": scheduler if local else "distributed"}  # the kind: never a cluster's address
    store.update_attrs(timings=timings)
    report = checks.gate(store, source.build, device=device, progress=progress,
                         samples=verify_samples or checks.DEFAULT_SAMPLES)
    store.update_attrs(timings=dict(timings, verify_seconds=report.figures["seconds"]))
    return store


def _versions() -> dict:
    import dask
    import zarr

    from importlib.metadata import PackageNotFoundError, version
    try:
        ours = version("linterp")
    except PackageNotFoundError:
        ours = "unknown"
    return {"linterp": ours, "torch": torch.__version__, "dask": dask.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__}


def source_key(identity: dict) -> str:
    """A stable hex key for an identity dict (caches interpreters per process)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
