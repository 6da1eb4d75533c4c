"""GPU benchmark: columns of F per second for EDSR-baseline ×4 at LR 64, against plain inference (images/s).

    python benchmarks/bench_gpu.py                        # one CUDA device, about 5 minutes (≤ 8)
    python benchmarks/bench_gpu.py --device cpu --quick   # the same measurement, small, on the CPU

The network is the official EDSR-baseline ×4 architecture with random weights (torch's initialisation, seed 0):
the published weights cannot be downloaded here, and the timings do not depend on the values. The input is a
random LR×LR image (values in [0, 255]). Measured in one run, on one device, TensorFloat-32 off (as ``compute``
runs it, see ``pipeline.compute.full_precision``):

1. plain inference: images per second, batches of ``--plain-batch`` images;
2. ours: columns per second of ``pipeline.compute.tile_columns`` (the work of one ``compute`` task without its
   store write: impulses, the frozen network on the tile's window, the copy of every column into the task's
   host block) on input tiles of ``--tile`` pixels, for each ``--batches`` size (16 is ``compute``'s default),
   and the frozen network alone at the best size (what is left is time outside the network);
3. with ``--store``: ``pipeline.compute.compute`` of the whole F into a fresh store (zstd compression and
   writes on the CPU, verification excluded from the figure): the end-to-end columns per second.

The goal of issue 17 is ≥ 1000 columns/s on one H200 at LR 64.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np
import torch

from pipeline.compute import (Source, column_pass, compute, full_precision, source_key, tile_columns,
                              tune_malloc)
from pipeline.interpreter import interpret
from pipeline.models import build

MODEL = "edsr-baseline-x4"
GOAL = 1000.0  # columns/s on one H200 at LR 64


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, units: int, device: str, seconds: float) -> tuple[float, int]:
    """(units per second, calls) of ``fn`` (which does ``units`` units of work) repeated for about ``seconds``."""
    synchronize(device)
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return units * calls / elapsed, calls


def plain_rate(model, x0: torch.Tensor, batch: int, device: str, seconds: float) -> float:
    images = x0.expand(batch, -1, -1, -1).contiguous()
    with torch.no_grad():
        model(images)  # warm-up (kernel selection)
        return rate(lambda: model(images), batch, device, seconds)[0]


def columns_rate(li, lr: int, tile: int, batch: int, device: str, seconds: float) -> float:
    """Columns per second of ``tile_columns`` over successive tiles of the image (as tasks would take them)."""
    tiles = [(y, x, tile, tile) for y in range(0, lr - tile + 1, tile) for x in range(0, lr - tile + 1, tile)]
    tile_columns(li, (3, lr, lr), tiles[0], batch=batch)  # warm-up
    synchronize(device)
    start, done = time.perf_counter(), 0
    for box in tiles:
        tile_columns(li, (3, lr, lr), box, batch=batch)
        done += 3 * tile * tile
        if time.perf_counter() - start >= seconds:
            break
    synchronize(device)
    return done / (time.perf_counter() - start)


def network_rate(li, lr: int, tile: int, batch: int, device: str, seconds: float) -> float:
    """Columns per second of the frozen network alone on the first tile's window: impulses already on the
    device, no host copy. ``columns_rate`` / this = the share of a column's time spent in the network."""
    forward, in_box, _ = column_pass(li, (0, 0, tile, tile))
    v = torch.zeros((batch, 3, in_box[2], in_box[3]), dtype=li.x0.dtype)
    for b in range(batch):
        v[b, b % 3, (b // 3) % tile, (b // (3 * tile)) % tile] = 1.0
    v = v.to(device).contiguous(memory_format=torch.channels_last)
    forward(v)  # warm-up
    return rate(lambda: forward(v), batch, device, seconds)[0]


def store_rate(model_build, x0: np.ndarray, device: str, batch: int) -> tuple[float, float]:
    """(columns/s of the compute tasks, seconds) of all of F into a fresh store in a temporary folder."""
    identity = {"model": MODEL, "weights": "random", "bench": "gpu", "lr": int(x0.shape[-1])}
    src = Source(model_build, x0, source_key(identity))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = compute(os.path.join(tmp, "f.zarr"), src, identity=identity, device=device, batch=batch,
                        progress=False)
        timings = store.attrs.timings
    seconds = timings["last_run_seconds"] - timings.get("verify_seconds", 0.0)
    return timings["vectors"] / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu.")
    parser.add_argument("--lr", type=int, default=None, help="LR side (default 64; 16 with --quick).")
    parser.add_argument("--tile", type=int, default=8, help="Input tile side of the column runs (default 8).")
    parser.add_argument("--batches", default="16,64,192", help="Columns per pass to try (default 16,64,192).")
    parser.add_argument("--plain-batch", type=int, default=16, help="Images per plain-inference batch.")
    parser.add_argument("--seconds", type=float, default=None,
                        help="Seconds per measurement (default 40; 3 with --quick).")
    parser.add_argument("--store", action="store_true", help="Also compute all of F into a store (end to end).")
    parser.add_argument("--quick", action="store_true", help="A small run (LR 16, tile 4, batch 16) to test it.")
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here (torch.cuda.is_available() is False); "
                 "`python benchmarks/bench_gpu.py --device cpu --quick` runs the same measurement on the CPU")
    lr = args.lr or (16 if args.quick else 64)
    tile = 4 if args.quick else args.tile
    batches = [16] if args.quick else [int(b) for b in args.batches.split(",")]
    seconds = args.seconds or (3.0 if args.quick else 40.0)
    if lr % tile:
        sys.exit(f"bench_gpu: --lr {lr} is not a multiple of --tile {tile}")

    tune_malloc()
    full_precision(device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"bench_gpu: {MODEL} with RANDOM weights (official architecture, torch's initialisation, seed 0; "
          f"published weights cannot be downloaded here, timings do not depend on them); LR {lr}, {device} "
          f"({name}), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)
    model_build = functools.partial(build, MODEL, "random")
    model = model_build().eval().to(device)
    x0 = torch.rand(1, 3, lr, lr, generator=torch.Generator().manual_seed(0)) * 255
    start = time.perf_counter()
    with torch.no_grad():
        li = interpret(model, x0.to(device))
    synchronize(device)
    radius = li.receptive_radius
    windows = "no windows" if radius is None else \
        f"windows {'smaller than' if 2 * radius + tile < lr else 'as large as'} the image"
    print(f"interpret: {time.perf_counter() - start:.2f} s; receptive radius {radius} LR pixels ({windows})",
          flush=True)

    plain = plain_rate(model, x0.to(device), args.plain_batch, device, seconds)
    print(f"plain inference: {plain:.1f} images/s (batch {args.plain_batch})", flush=True)
    rows = []
    for batch in batches:
        cols = columns_rate(li, lr, tile, batch, device, seconds)
        rows.append((batch, cols))
        print(f"ours, batch {batch}: {cols:.1f} columns/s, per-column cost / plain per-image cost "
              f"{plain / cols:.2f}", flush=True)
    best_batch, best = max(rows, key=lambda r: r[1])
    network = network_rate(li, lr, tile, best_batch, device, seconds)
    print(f"frozen network alone, batch {best_batch}: {network:.1f} columns/s; the rest of a column's time "
          f"(impulses, host copy) is {max(0.0, 1 - best / network):.0%} of it", flush=True)
    if args.store:
        end_to_end, secs = store_rate(model_build, x0.numpy(), device, best_batch)
        print(f"compute() of all of F ({3 * lr * lr} columns, batch {best_batch}, verification excluded): "
              f"{secs:.1f} s, {end_to_end:.1f} columns/s", flush=True)
    verdict = "met" if best >= GOAL else "not met"
    where = "" if device.startswith("cuda") else " (the goal is for one H200; this run is not on a GPU)"
    print(f"best: {best:.1f} columns/s at batch {best_batch} = {best / plain:.2f}× plain inference's images/s; "
          f"goal ≥ {GOAL:.0f} columns/s: {verdict}{where}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
