"""Cost of verification: `linterp verify` (default samples) against the `compute` that made the store.

For each model, a store of a crop of the default image is computed (one worker with every core, as verify runs,
so that the two figures share the same conditions on a busy machine), then verified twice: by compute's own gate (timed
inside ``compute``) and as `linterp verify` does it (model rebuilt from the store's attributes). Printed per
model: compute seconds (the tasks, without the gate), verify seconds, their ratio, the phases of verify
(reading F, building the interpreter, network passes), the status and the largest check figure.
Goal (issue 11): verify ≤ 10 % of compute for image-to-image stores.

    python benchmarks/bench_verify.py [--models edsr-small-x4 i2i-label] [--crop 16,24,32,32]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench_compute import table  # benchmarks/ is on sys.path when a script here runs

MODELS = ("bicubic-x4", "pixelshuffle-x4", "edsr-small-x4", "i2i-label")


#: checks whose figures are printed (rows stores have "columns" instead of "rows")
CHECKS = ("reconstruction", "model", "probe", "rows", "columns", "jacobian", "windows")


def measure(name: str, crop: str, folder: str) -> tuple[list, list]:
    from pipeline.sources import model_source
    from pipeline.compute import compute
    from pipeline.store import open_store
    from pipeline.verify import verify_store

    source, identity, attrs = model_source(name, None, False, None, crop)
    path = os.path.join(folder, f"{name}.zarr")
    store = compute(path, source, identity=identity, attrs=attrs, workers=1, device="cpu", progress=False)
    timings = store.attrs["timings"]
    started = time.perf_counter()
    report = verify_store(open_store(path))
    again = time.perf_counter() - started
    compute_s = timings["last_run_seconds"]
    worst = max((c.value / c.tolerance for c in report.checks if c.value is not None and c.tolerance), default=0)
    phases = report.figures["phases"]
    values = {c.name: c.value for c in report.checks}
    figures = [name] + [values.get(k) if values.get(k) is not None else "-" for k in CHECKS]
    return [name, str(tuple(store.F.shape[3:])), compute_s, timings["verify_seconds"], again,
            again / compute_s, phases["read_s"], phases.get("interpret_s", 0), phases.get("passes_s", 0),
            report.status, worst], figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--crop", default="16,24,32,32", help="X,Y,W,H of the default image (the demo's crop)")
    args = parser.parse_args()

    import torch

    from pipeline.compute import tune_malloc

    tune_malloc()
    print(f"bench_verify: torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
          f"threads, load average {os.getloadavg()[0]:.1f} at start")
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="bench_verify_") as folder:
        for name in args.models:
            row, checks = measure(name, args.crop, folder)
            rows.append(row)
            figures.append(checks)
            print(f"  {name}: done", flush=True)
    print(f"\n## verify (default samples) against compute, crop {args.crop}")
    print(table(rows, ["model", "input", "compute s", "gate s", "verify s", "verify/compute", "read s",
                       "interpret s", "passes s", "status", "worst/tol"]))
    print("\n## check figures (relative max errors; '-': not applicable)")
    print(table(figures, ["model", *CHECKS]))
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
