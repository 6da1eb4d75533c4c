"""Truncated SVD speed and memory: k singular triplets of F(x0) for edsr-small-x4 at LR sizes (default k = 32,
LR 64 and 128, through the interpreter; optionally through a stored F).

Each case runs in its own child process, so its peak resident memory (ru_maxrss) is its own. Printed per case:
wall time of the SVD, vector passes (one pass = F v then Fᵀ of it), steps, whether it converged, the largest
relative residual, peak memory, and the ratios that survive a noisy shared machine: SVD time over one plain
inference of the model, and vector passes over the n passes a dense F would need.

    python benchmarks/bench_svd.py [--sizes 64 128] [--k 32] [--method lanczos] [--threads 1]
                                   [--weights random] [--store PATH]   # --store: read-only, from the stored F
                                   [--max-iter N] [--progress]         # a capped run times the steps
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from bench_interpreter import best_of  # benchmarks/ is on sys.path when a script here runs


def child(args) -> dict:
    """One case, in this process: build, time plain inference, run the SVD; returns the figures."""
    import numpy as np
    import torch

    from pipeline import images
    from pipeline.compute import tune_malloc
    from pipeline.models import build, spec
    from pipeline.svd import model_operator, store_operator, truncated_svd

    torch.set_num_threads(args.threads)
    tune_malloc()
    name = "edsr-small-x4"
    if args.store:
        from pipeline.store import open_store
        from pipeline.sources import model_from_store

        store = open_store(args.store, require_complete=True)
        model = model_from_store(store)  # the store's own model and weights (for the inference reference)
        x0 = torch.as_tensor(store.x0)[None]
        op = store_operator(store)
    else:
        model = build(name, args.weights)
        from skimage import data

        from pipeline.interpreter import interpret

        side = args.size
        img = images.crop(data.astronaut(), (max(0, 220 - side // 2), max(0, 110 - side // 2), side, side))
        x0 = images.to_input(img, spec(name))
        with torch.no_grad():
            op = model_operator(interpret(model, x0), batch=args.batch)
    with torch.no_grad():
        inference = best_of(lambda: model(x0), 3)
    result = truncated_svd(op, args.k, method=args.method, max_iter=args.max_iter, progress=args.progress)
    worst = float(np.maximum(result.residual_forward, result.residual_transpose).max())
    return {"source": "store" if args.store else "model", "lr": list(x0.shape[2:]), "k": args.k,
            "method": args.method, "svd_s": result.info["seconds"], "passes": result.info["operator_passes"],
            "steps": result.info["iterations"], "max_iter": args.max_iter,
            "converged": result.info["converged"], "max_residual": worst,
            "n": op.n, "inference_s": inference, "s_top": float(result.S[0]), "s_k": float(result.S[-1]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--method", default="lanczos")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the dev machine is shared)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=500, help="cap on Lanczos steps (a partial run times steps)")
    ap.add_argument("--progress", action="store_true", help="show the solver's progress bar (on stderr)")
    ap.add_argument("--weights", default=None, help="default: the trained file if present, else random")
    ap.add_argument("--store", default=None, help="benchmark the stored-F source on this complete store")
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.weights is None:
        from pipeline.models.registry import WEIGHTS_DIR

        args.weights = None if (WEIGHTS_DIR / "edsr-small-x4.pt").is_file() else "random"
    if args.child:
        print(json.dumps(child(args)))
        return
    base = [sys.executable, __file__, "--child", "--k", str(args.k), "--method", args.method,
            "--threads", str(args.threads), "--batch", str(args.batch), "--max-iter", str(args.max_iter)]
    base += ["--progress"] if args.progress else []
    base += ["--weights", args.weights] if args.weights else []
    cases = [base + ["--store", args.store]] if args.store else [base + ["--size", str(s)] for s in args.sizes]
    weights = "the store's" if args.store else args.weights or "trained"
    print(f"edsr-small-x4 ({weights} weights), k={args.k}, {args.method}, "
          f"torch threads {args.threads}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for cmd in cases:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['source']:5s} LR {r['lr'][0]}×{r['lr'][1]} (n={r['n']}): {r['svd_s']:.1f} s, "
              f"{r['passes']} vector passes ({r['passes'] / r['n']:.3f} of n) in {r['steps']} steps, "
              f"converged={r['converged']}, max residual {r['max_residual']:.1e}, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, SVD = {r['svd_s'] / r['inference_s']:.0f}× one inference "
              f"({r['inference_s'] * 1e3:.0f} ms), s1={r['s_top']:.4g}, s{r['k']}={r['s_k']:.4g}")
        print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
