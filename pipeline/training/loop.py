"""The training loop: seeded, resumable (a checkpoint next to the output file), reporting through pipeline.progress.

Step k draws its batch from `np.random.default_rng([seed, k])`, so a run resumed from a checkpoint sees the
same batches as an uninterrupted one, and the same seed reproduces the same steps.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.progress import progress as stage
from pipeline.training.recipes import Recipe


def checkpoint_path(out: Path) -> Path:
    """Where a run writing `out` keeps its resumable state."""
    return out.with_name(out.name + ".ckpt")


def _cosine(steps: int):
    return lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(recipe: Recipe, out: Path, steps: int | None = None, seed: int | None = None,
          checkpoint_every: int = 50, progress: bool = True) -> dict:
    """Train `recipe` for `steps` (default: the recipe's) and save the float32 state dict to `out`.

    Resumes from `checkpoint_path(out)` when it holds a run with the same name, seed and steps; deletes
    it when done. Returns {"steps", "seconds", "cpu_seconds", "losses"} (wall and CPU time of this process,
    all threads) where losses are the per-step training losses of
    this process (wall time counts only this process too).
    """
    steps = recipe.steps if steps is None else int(steps)
    seed = recipe.seed if seed is None else int(seed)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = recipe.make_model().float().train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps))
    start = 0
    identity = {"name": recipe.name, "seed": seed, "steps": steps}
    ckpt = checkpoint_path(out)
    if ckpt.exists():
        try:
            state = torch.load(ckpt, weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on damaged or foreign files
            state = err
        if not isinstance(state, dict) or "identity" not in state:
            raise ValueError(f"{ckpt}: not a checkpoint of `linterp train` ({type(state).__name__}); "
                             f"delete it to start over")
        if state["identity"] == identity:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start = state["step"]
    losses = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    with stage(steps, f"train {recipe.name}", unit="steps", enabled=progress, initial=start) as bar:
        for k in range(start, steps):
            torch.manual_seed(seed * 1_000_003 + k)  # dropout masks of step k
            x, y = recipe.task.draw(np.random.default_rng([seed, k]))
            loss = recipe.task.loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update()
            bar.note(loss=losses[-1])
            if (k + 1) % checkpoint_every == 0 and k + 1 < steps:
                _save_atomic({"identity": identity, "step": k + 1, "model": model.state_dict(),
                              "opt": opt.state_dict(), "sched": sched.state_dict()}, ckpt)
    model.eval()
    _save_atomic({k: v.detach().float().contiguous() if v.is_floating_point() else v
                  for k, v in model.state_dict().items()}, out)
    ckpt.unlink(missing_ok=True)
    return {"steps": steps, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            "losses": losses}
