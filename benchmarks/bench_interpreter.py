"""Engine speed: EDSR-baseline ×4 (random weights) at LR 32×32, batch 32, all in one run.

Prints images/s of plain inference, of `forward` (F v) and of `transpose` (Fᵀ u) on the same batch, their
ratios, and the cost of `interpret` itself in plain forward passes. Ratios, not absolute times, are what to
compare: the machine is shared.

    python benchmarks/bench_interpreter.py [--size 32] [--batch 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.interpreter import interpret
from pipeline.models import build


def best_of(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build("edsr-baseline-x4", weights="random")
    x0 = 255 * torch.rand(1, 3, args.size, args.size)
    v = torch.randn(args.batch, 3, args.size, args.size)

    with torch.no_grad():
        plain = best_of(lambda: model(v), args.repeats)
        single = best_of(lambda: model(x0), args.repeats)
    fresh = build("edsr-baseline-x4", weights="random")
    t = time.perf_counter()
    interpret(fresh, x0)  # first call: traces the model
    t_cold = time.perf_counter() - t
    t_interpret = best_of(lambda: interpret(model, x0), max(1, args.repeats // 2))
    li = interpret(model, x0)
    u = torch.randn(args.batch, *li.output.shape[1:])
    forward = best_of(lambda: li.forward(v), args.repeats)
    transpose = best_of(lambda: li.transpose(u), args.repeats)

    rows = [
        ("plain inference", args.batch / plain, 1.0),
        ("forward  (F v)", args.batch / forward, plain / forward),
        ("transpose (Fᵀu)", args.batch / transpose, plain / transpose),
    ]
    print(f"EDSR-baseline x4, LR {args.size}x{args.size}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':18s} {'images/s':>10s} {'ratio':>8s}")
    for name, rate, ratio in rows:
        print(f"{name:18s} {rate:10.2f} {ratio:8.2f}x")
    print(f"interpret(model, x0): {t_interpret:.3f} s = {t_interpret / single:.2f} plain forward passes "
          f"of one image ({single:.3f} s); first call, tracing included: {t_cold:.3f} s = "
          f"{t_cold / single:.2f} passes")


if __name__ == "__main__":
    main()
