"""The training loop: seeded, resumable (a checkpoint next to the output file), reporting through pipeline.progress.

A recipe runs its stages in order (`Recipe.stages()`: the main run, then an optional fine-tune), each with a
fresh Adam. Step k of the first stage draws its batch from `np.random.default_rng([seed, k])`, of stage i ≥ 1
from `[seed, k, i]`, so a run resumed from a checkpoint (also at a stage boundary) sees the same batches as an
uninterrupted one, and the same seed reproduces the same steps.
"""
from __future__ import annotations

import dataclasses
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
    """Train `recipe` stage by stage (`recipe.stages()`) and save the float32 state dict to `out`.

    `steps` replaces every stage's step count (default: the recipe's). Resumes from `checkpoint_path(out)`
    when it holds a run with the same name, seed and steps; deletes it when done. Returns {"steps" (all
    stages), "seconds", "cpu_seconds", "losses", "skipped"}: wall and CPU time of this process (all threads),
    its per-step training losses, and the number of steps skipped for a non-finite loss.
    """
    seed = recipe.seed if seed is None else int(seed)
    stages = [s if steps is None else dataclasses.replace(s, steps=int(steps)) for s in recipe.stages()]
    if any(s.steps < 1 for s in stages):
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = recipe.make_model().float().train()
    identity = {"name": recipe.name, "seed": seed, "steps": [s.steps for s in stages]}
    ckpt = checkpoint_path(out)
    resume = _resume_state(ckpt, identity)
    first = resume["stage"] if resume else 0
    losses, skipped = [], 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for index in range(first, len(stages)):
        stage_ = stages[index]
        opt = torch.optim.Adam(model.parameters(), lr=stage_.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(stage_.steps))
        start = 0
        if resume and index == first:
            model.load_state_dict(resume["model"])
            if resume["opt"] is not None:  # None: saved at the start of this stage, its optimiser fresh
                opt.load_state_dict(resume["opt"])
                sched.load_state_dict(resume["sched"])
            start = resume["step"]
        name = recipe.name if len(stages) == 1 else f"{recipe.name} ({index + 1}/{len(stages)})"

        with stage(stage_.steps, f"train {name}", unit="steps", enabled=progress, initial=start) as bar:
            for k in range(start, stage_.steps):
                torch.manual_seed(seed * 1_000_003 + k)  # dropout masks of step k
                x, y = stage_.task.draw(np.random.default_rng([seed, k] if index == 0 else [seed, k, index]))
                loss = stage_.task.loss(model, x, y)
                opt.zero_grad(set_to_none=True)
                if torch.isfinite(loss):
                    loss.backward()
                    if stage_.clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), stage_.clip)
                    opt.step()
                else:
                    skipped += 1
                sched.step()
                losses.append(loss.item())
                bar.update()
                bar.note(loss=losses[-1])
                if (k + 1) % checkpoint_every == 0 and k + 1 < stage_.steps:
                    _save_atomic({"identity": identity, "stage": index, "step": k + 1, "model": model.state_dict(),
                                  "opt": opt.state_dict(), "sched": sched.state_dict()}, ckpt)
        if index + 1 < len(stages):  # the next stage starts from these weights, with a fresh optimiser
            _save_atomic({"identity": identity, "stage": index + 1, "step": 0, "model": model.state_dict(),
                          "opt": None, "sched": None}, ckpt)
    model.eval()
    _save_atomic({k: v.detach().float().contiguous() if v.is_floating_point() else v
                  for k, v in model.state_dict().items()}, out)
    ckpt.unlink(missing_ok=True)
    return {"steps": sum(s.steps for s in stages), "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0, "losses": losses, "skipped": skipped}


def _resume_state(ckpt: Path, identity: dict) -> dict | None:
    """The checkpoint's state when it belongs to the run `identity`; None when there is none or it is
    another run's; ValueError when the file is not a checkpoint of `linterp train`."""
    if not ckpt.exists():
        return None
    try:
        state = torch.load(ckpt, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on damaged or foreign files
        state = err
    if not isinstance(state, dict) or "identity" not in state:
        raise ValueError(f"{ckpt}: not a checkpoint of `linterp train` ({type(state).__name__}); "
                         f"delete it to start over")
    return state if state["identity"] == identity else None
