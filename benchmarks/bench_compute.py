"""Benchmark of `linterp compute`: seconds per column, full-F time, glibc malloc tuning and store sizes.

    .venv/bin/python benchmarks/bench_compute.py [--quick]

1. Seconds per column of F at LR 32, 64, 128, 256 for EDSR-baseline ×4 (random weights) and edsr-small-x4,
   measured in one run, each size in a fresh process (so peak memory can be read): ours (the columns of one
   4×4 input tile at the image centre, on its locality window: 48 columns), chunked ``torch.func.jacfwd``
   (vmap over jvp, a sample of columns) and plain inference (a sample of images of the same size).
2. All of F for EDSR-baseline at LR 32 (``--full-lr``) with ``pipeline.compute.compute`` (dask threads, zarr store, verify
   excluded) against plain inference of as many images (3072).
3. glibc malloc thresholds (``tune_malloc``) on and off: columns/s and images/s at LR 64.
4. Store sizes for a 64×64 crop of the default image: bytes on disk, file count, ratio to dense float32.
5. What a worker would receive if the interpreter were pickled, against rebuilding it from a ``Source``.
6. The scaling law (issue 17): edsr-small-x4 on LR crops of the astronaut photo around the default face at
   LR 32, 64, 96, 128, exact float32 and compact (``--dtype float16 --support-tol 1e-6``): wall time of
   ``compute`` (verification included) and of ``export_site`` (no SVD), peak RSS, store and site bytes, each
   size in a fresh process. Sizes above ``--scaling-full`` are *estimated*: a sample of evenly spread tasks
   is computed into a real store (``run_task``, the dask threads scheduler as in ``compute``) and its time
   and bytes are scaled by the task count (verification not included); their site bytes and export time are
   scaled from the largest full run by the pixel count, and their RSS is that of the sample run.
Goals (issue 4): per-column cost at LR 256 ≤ 1.3× that at LR 128; ≥ 4× faster than jacfwd at LR 256; all of
F at LR 32 within 1.2× of plain inference; peak memory independent of image size beyond the window.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from pipeline.compute import Source, compute, source_key, tile_columns, tune_malloc
from pipeline.interpreter import interpret
from pipeline.models import build

SIZES = (32, 64, 128, 256)
JAC_SAMPLE = {32: 8, 64: 4, 128: 2, 256: 2}
PLAIN_SAMPLE = {32: 16, 64: 16, 128: 4, 256: 2}


def weights_for(name: str) -> str | None:
    """edsr-small-x4's trained weights when installed, else random (timings do not depend on the values)."""
    if name == "edsr-baseline-x4":
        return "random"
    try:
        build(name)
        return None
    except Exception:
        return "random"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def child(name: str, lr: int, mallopt: bool) -> dict:
    """Per-column and per-image costs of one model at one LR size (run in a fresh process)."""
    if mallopt:
        tune_malloc()
    torch.manual_seed(1)
    model = build(name, weights_for(name)).eval()
    x0 = torch.rand(1, 3, lr, lr) * 255
    start = time.perf_counter()
    li = interpret(model, x0)
    radius = li.receptive_radius
    result = {"model": name, "lr": lr, "mallopt": mallopt, "interpret_s": time.perf_counter() - start,
              "radius": radius}
    box = (lr // 2 - 2, lr // 2 - 2, 4, 4)
    tile_columns(li, (3, lr, lr), (0, 0, 1, 1), batch=1)  # warm-up
    rss_before = rss_mib()
    ours = timed(lambda: tile_columns(li, (3, lr, lr), box, batch=16))
    result.update(ours_s_per_col=ours / 48, ours_cols=48, rss_before_cols_mib=rss_before,
                  rss_after_cols_mib=rss_mib())
    if mallopt:
        n = JAC_SAMPLE[lr]
        tangents = torch.zeros(n, 1, 3, lr, lr)
        for i in range(n):
            tangents[i, 0, i % 3, box[0] + i // 3, box[1]] = 1.0

        def jac():
            with torch.no_grad():
                torch.func.vmap(lambda v: torch.func.jvp(model, (x0,), (v,))[1])(tangents)

        result.update(jacfwd_s_per_col=timed(jac) / n, jacfwd_cols=n)
    m = PLAIN_SAMPLE[lr]
    images = x0.expand(m, -1, -1, -1).contiguous()
    with torch.no_grad():
        model(images[:1])
        plain = timed(lambda: [model(images[i:i + 16]) for i in range(0, m, 16)])
    result.update(plain_s_per_image=plain / m, plain_images=m)
    return result


def run_child(name: str, lr: int, mallopt: bool = True) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, str(lr), str(int(mallopt))],
                         capture_output=True, text=True)
    if out.returncode:
        return {"model": name, "lr": lr, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.4g}" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def per_column(sizes) -> list[dict]:
    results = []
    for name in ("edsr-baseline-x4", "edsr-small-x4"):
        for lr in sizes:
            r = run_child(name, lr)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["model"], str(r["lr"]), "error: " + r["error"]] + [""] * 6)
            continue
        rows.append([r["model"], str(r["lr"]), str(r["radius"]), r["ours_s_per_col"], r["jacfwd_s_per_col"],
                     r["plain_s_per_image"], r["jacfwd_s_per_col"] / r["ours_s_per_col"],
                     r["ours_s_per_col"] / r["plain_s_per_image"],
                     r["rss_after_cols_mib"] - r["rss_before_cols_mib"]])
    print("\n## Seconds per column (ours: 48 columns of a centre tile on its window; jacfwd: vmap over jvp)")
    print(table(rows, ["model", "LR", "radius", "ours s/col", "jacfwd s/col", "plain s/img", "jacfwd/ours",
                       "ours/plain", "ΔRSS MiB"]))
    for name in ("edsr-baseline-x4", "edsr-small-x4"):
        by = {r["lr"]: r for r in results if r["model"] == name and "error" not in r}
        if 128 in by and 256 in by:
            print(f"{name}: per-column cost LR256 / LR128 = "
                  f"{by[256]['ours_s_per_col'] / by[128]['ours_s_per_col']:.2f} (goal ≤ 1.3); "
                  f"jacfwd / ours at LR256 = {by[256]['jacfwd_s_per_col'] / by[256]['ours_s_per_col']:.1f} "
                  f"(goal ≥ 4)")
    return results


def full_f(workers: int | None, lr: int = 32) -> dict:
    name = "edsr-baseline-x4"
    x0 = (np.random.default_rng(0).random((1, 3, lr, lr)) * 255).astype(np.float32)
    identity = {"model": name, "weights_sha256": "random", "bench": f"lr{lr}"}
    src = Source(functools.partial(build, name, "random"), x0, source_key(identity))
    with tempfile.TemporaryDirectory() as tmp:
        store = compute(os.path.join(tmp, "f.zarr"), src, identity=identity, device="cpu", progress=False,
                        workers=workers)
        ours = store.attrs.timings["last_run_seconds"]
        verification = store.attrs.verification
    model = build(name, "random")
    n = 3 * lr * lr
    images = torch.from_numpy(x0).expand(16, -1, -1, -1).contiguous()
    plain = plain_parallel(model, images, n // 16, workers or os.cpu_count() or 1)
    print(f"\n## All of F, EDSR-baseline ×4, LR {lr} ({n} columns; plain inference of {n // 16 * 16} images)")
    print(table([[ours, plain, ours / plain, verification["reconstruction_rel"]]],
                ["compute() s", "plain inference s", "ratio (goal ≤ 1.2)", "reconstruction rel err"]))
    return {"compute_s": ours, "plain_s": plain, "verification": verification}


def plain_parallel(model, batch: torch.Tensor, batches: int, workers: int) -> float:
    """Seconds for ``batches`` inferences of ``batch`` spread over ``workers`` threads with cores // workers
    torch threads each: the same parallel layout as ``compute``'s dask threads, for a like-for-like ratio."""
    from concurrent.futures import ThreadPoolExecutor

    def infer(_):
        with torch.no_grad():  # grad mode is per thread
            model(batch)

    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:
            return timed(lambda: list(pool.map(infer, range(batches))))
    finally:
        torch.set_num_threads(saved)


def mallopt_effect() -> list[dict]:
    rows, results = [], []
    for flag in (False, True):
        r = run_child("edsr-baseline-x4", 64, flag)
        results.append(r)
        if "error" not in r:
            rows.append(["on" if flag else "off", 1 / r["ours_s_per_col"], 1 / r["plain_s_per_image"]])
    print("\n## glibc malloc thresholds (tune_malloc), EDSR-baseline ×4 at LR 64")
    print(table(rows, ["mallopt", "columns/s", "plain images/s"]))
    return results


def store_sizes(workers: int | None, side: int = 64,
                models=("bicubic-x4", "pixelshuffle-x4", "edsr-small-x4")) -> list[dict]:
    from pipeline import images
    from pipeline.models import spec

    _, img = images.default_image()
    img = images.crop(img, (16, 16, side, side))
    rows, results = [], []
    for name in models:
        weights = None if name == "bicubic-x4" else weights_for(name)
        x0 = images.to_input(img, spec(name)).numpy()
        identity = {"model": name, "weights": weights, "bench": "sizes"}
        src = Source(functools.partial(build, name, weights), x0, source_key(identity))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.zarr")
            start = time.perf_counter()
            store = compute(path, src, identity=identity, device="cpu", progress=False, workers=workers)
            seconds = time.perf_counter() - start
            files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
            size = sum(os.path.getsize(f) for f in files)
            dense = 4 * int(np.prod(store.F.shape))
            r = {"model": name, "weights": weights or "default", "F": list(store.F.shape), "bytes": size,
                 "files": len(files), "dense_bytes": dense, "seconds": seconds, "tile": store.attrs.tile}
        results.append(r)
        rows.append([name, r["weights"], "×".join(map(str, r["F"])), f"{size / 2**20:.1f} MiB", str(len(files)),
                     f"{dense / 2**30:.2f} GiB", size / dense, seconds])
    print(f"\n## Stores of a {side}×{side} crop of the default image")
    print(table(rows, ["model", "weights", "F shape", "on disk", "files", "dense f32", "ratio", "compute s"]))
    return results


def pickling() -> dict:
    name, lr = "edsr-baseline-x4", 64
    x0 = (np.random.default_rng(0).random((1, 3, lr, lr)) * 255).astype(np.float32)
    src = Source(functools.partial(build, name, "random"), x0, "k")
    start = time.perf_counter()
    li = interpret(build(name, "random"), torch.from_numpy(x0))
    rebuild = time.perf_counter() - start
    try:
        li_bytes = len(pickle.dumps(li))
    except Exception as err:  # the engine holds an fx graph and closures
        li_bytes = f"not picklable ({type(err).__name__})"
    source_bytes = len(pickle.dumps(src))
    print(f"\n## Workers: pickled Source {source_bytes / 1024:.1f} KiB vs interpreter {li_bytes}; "
          f"rebuilding the interpreter once per process: {rebuild:.2f} s (EDSR-baseline, LR {lr})")
    return {"source_bytes": source_bytes, "li_bytes": li_bytes, "rebuild_s": rebuild}


SCALING_SIZES = (32, 64, 96, 128)
SCALING_OPTIONS = {"exact": {}, "compact": {"dtype": "float16", "support_tol": 1e-6}}


def du(path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return sum(os.path.getsize(f) for f in files), len(files)


def scaling_child(lr: int, option: str, sample: int) -> dict:
    """One row of the scaling law (run in a fresh process): edsr-small-x4 on an LR×LR crop of the astronaut
    around the default face; ``sample`` 0 = the whole compute + export, else ``sample`` tasks of compute only."""
    import dask
    from dask import delayed
    from skimage import data

    from pipeline import images
    from pipeline.compact import Compaction
    from pipeline.compute import engine, make_plan, run_task
    from pipeline.export.site import export_site
    from pipeline.models import spec
    from pipeline.store import create_store

    tune_malloc()
    name = "edsr-small-x4"
    weights = weights_for(name)
    top, left, h, w = images.DEFAULT_IMAGE_BOX
    photo = data.astronaut()
    y0, x0_ = max(0, top + h // 2 - lr // 2), max(0, left + w // 2 - lr // 2)
    img = np.ascontiguousarray(photo[y0:y0 + lr, x0_:x0_ + lr])
    x0 = images.to_input(img, spec(name)).numpy()
    options = SCALING_OPTIONS[option]
    identity = {"model": name, "weights": weights, "bench": f"scaling-{lr}", **options}
    src = Source(functools.partial(build, name, weights), x0, source_key(identity))
    result = {"lr": lr, "option": option, "sampled": bool(sample)}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = os.path.join(tmp, "s.zarr")
        start = time.perf_counter()
        if not sample:
            compute(path, src, identity=identity, device="cpu", progress=False, **options)
            result["compute_s"] = time.perf_counter() - start
            start = time.perf_counter()
            export_site([path], os.path.join(tmp, "site"), progress=False)
            result["export_s"] = time.perf_counter() - start
            result["site_bytes"], result["site_files"] = du(os.path.join(tmp, "site"))
            result["store_bytes"], _ = du(path)
        else:
            compaction = Compaction(**options)
            li = engine(src, "cpu")
            plan = make_plan(li, x0.shape[1:])
            create_store(path, identity=identity, attrs={}, x0=x0, y0=li.output.detach().numpy(),
                         residual=li.residual.detach().numpy(), shards=plan.shards, chunks=plan.chunks,
                         tasks=plan.tasks, dtype=compaction.dtype, compact=compaction.active)
            setup = time.perf_counter() - start
            grid = list(np.ndindex(*plan.tasks))
            picks = [grid[int(i)] for i in np.linspace(0, len(grid) - 1, min(sample, len(grid)))]
            workers = os.cpu_count() or 1
            calls = [delayed(run_task, pure=False)(src, "cpu", path, plan, ix, 1, compaction) for ix in picks]
            start = time.perf_counter()
            saved = torch.get_num_threads()
            dask.compute(*calls, scheduler="threads", num_workers=workers)
            torch.set_num_threads(saved)
            factor = len(grid) / len(picks)
            result["compute_s"] = setup + (time.perf_counter() - start) * factor
            f_bytes, _ = du(os.path.join(path, "F"))
            all_bytes, _ = du(path)
            result["store_bytes"] = int(all_bytes + f_bytes * (factor - 1))
            result.update(tasks=len(grid), sample_tasks=len(picks))
    result["peak_rss_mib"] = rss_mib()
    return result


def scaling(sizes, full: set, sample: int) -> list[dict]:
    results = []
    for option in SCALING_OPTIONS:
        measured = None  # the largest full run: the scale of the sampled rows' site bytes and export time
        for lr in sizes:
            out = subprocess.run([sys.executable, __file__, "--scaling-child", str(lr), option,
                                  str(0 if lr in full else sample)], capture_output=True, text=True)
            if out.returncode:
                r = {"lr": lr, "option": option, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if not r["sampled"]:
                    measured = r
                elif measured is not None:
                    area = (lr / measured["lr"]) ** 2
                    r.update(site_bytes=int(measured["site_bytes"] * area), export_s=measured["export_s"] * area)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([str(r["lr"]), r["option"], "error: " + r["error"]] + [""] * 5)
            continue
        est = "est." if r["sampled"] else ""
        total = r["compute_s"] + r.get("export_s", float("nan"))
        rows.append([str(r["lr"]), r["option"] + (f" (sample {r['sample_tasks']}/{r['tasks']} tasks)" if est else ""),
                     f"{r['compute_s']:.1f} {est}".strip(), f"{r.get('export_s', float('nan')):.1f} {est}".strip(),
                     f"{total:.1f} {est}".strip(), f"{r['peak_rss_mib']:.0f}",
                     f"{r['store_bytes'] / 2**20:.1f} {est}".strip(),
                     f"{r.get('site_bytes', float('nan')) / 2**20:.1f} {est}".strip()])
    print("\n## Scaling law, edsr-small-x4 (compute with its verification, export without SVD; est. = estimated from "
          "a sample of tasks, site and export scaled from the largest full run by pixel count)")
    print(table(rows, ["LR", "store", "compute s", "export s", "total s", "peak RSS MiB", "store MiB", "site MiB"]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--scaling-sizes", default=",".join(map(str, SCALING_SIZES)),
                        help="LR sides of the scaling law (default 32,64,96,128).")
    parser.add_argument("--scaling-full", default="32,64",
                        help="LR sides computed and exported whole; larger ones are estimated from a sample.")
    parser.add_argument("--scaling-sample", type=int, default=4, help="Tasks computed for an estimated size.")
    parser.add_argument("--quick", action="store_true", help="LR 32 and 64 only; no full-F or size runs.")
    parser.add_argument("--sections", default="columns,full,mallopt,sizes,pickling,scaling",
                        help="Comma-separated sections to run (default: all).")
    parser.add_argument("--full-lr", type=int, default=32, help="LR side for the all-of-F run (default 32).")
    parser.add_argument("--crop", type=int, default=64, help="Crop side for the store sizes (default 64).")
    parser.add_argument("--size-models", default="bicubic-x4,pixelshuffle-x4,edsr-small-x4",
                        help="Comma-separated models for the store sizes.")
    parser.add_argument("--workers", type=int, default=None, help="dask workers for the store runs.")
    parser.add_argument("--json", default=None, help="Also write all figures to this JSON file.")
    args = parser.parse_args()
    if args.child:
        name, lr, flag = args.child
        print(json.dumps(child(name, int(lr), bool(int(flag)))))
        return
    if args.scaling_child:
        lr, option, sample = args.scaling_child
        print(json.dumps(scaling_child(int(lr), option, int(sample))))
        return
    tune_malloc()
    print(f"bench_compute: torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    sections = set(args.sections.split(",")) - ({"full", "mallopt", "sizes", "pickling", "scaling"} if args.quick
                                                 else set())
    figures = {}
    if "columns" in sections:
        figures["per_column"] = per_column(SIZES[:2] if args.quick else SIZES)
    if "full" in sections:
        figures["full_f"] = full_f(args.workers, args.full_lr)
    if "mallopt" in sections:
        figures["mallopt"] = mallopt_effect()
    if "sizes" in sections:
        figures["sizes"] = store_sizes(args.workers, args.crop, args.size_models.split(","))
    if "pickling" in sections:
        figures["pickling"] = pickling()
    if "scaling" in sections:
        figures["scaling"] = scaling([int(n) for n in args.scaling_sizes.split(",")],
                                     {int(n) for n in args.scaling_full.split(",") if n}, args.scaling_sample)
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
