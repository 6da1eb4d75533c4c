"""`linterp train NAME` and `linterp evaluate NAME`: the click side of `pipeline.training`."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import SEED, THREADS


@click.command()
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the state dict (default: out/train/NAME.pt; the committed default weights, whose "
                   "sha256 the registry checks, are never replaced).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps of each training stage (default: the recipe's).")
@click.option("--seed", type=SEED, default=None, help="Seed (default: the recipe's, 0).")
@click.option("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(name, out, steps, seed, threads, quiet):
    """Train the offline default NAME from a fixed seed on data from installed packages.

    A killed run resumes from OUT.ckpt when started again with the same NAME, --steps and --seed.
    """
    import torch

    from pipeline.commands.errors import click_error, writable_file
    from pipeline.models.weights import file_sha256
    from pipeline.training.loop import train as run
    from pipeline.training.recipes import recipe

    try:
        rec = recipe(name)
    except ValueError as err:
        raise click_error(err) from None
    if threads:
        torch.set_num_threads(threads)
    out = out or Path("out") / "train" / f"{name}.pt"
    writable_file(out)  # before any training: a run that cannot be saved is not started
    try:
        result = run(rec, out, steps=steps, seed=seed, progress=not quiet)
    except (ValueError, OSError) as err:  # an unreadable checkpoint, a full disk, …
        raise click_error(err, writing=out) from None
    losses = result["losses"]
    tail = losses[-min(50, len(losses)):] if losses else []
    click.echo(f"{name}: {result['steps']} steps, {result['seconds']:.0f} s wall and {result['cpu_seconds']:.0f} s "
               f"of CPU in this process, final loss (mean of last {len(tail)}) {sum(tail) / max(1, len(tail)):.4g}"
               + (f", {result['skipped']} steps skipped (non-finite loss)" if result["skipped"] else ""))
    click.echo(f"wrote {out} (sha256 {file_sha256(out)}); use it with --weights {out}")


@click.command()
@click.argument("name")
@click.option("--weights", default=None, help="A weight file (default: NAME's default weights).")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled whole-model file (only for trusted files).")
@click.option("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's).")
def evaluate(name, weights, trust_pickle, threads):
    """Print NAME's quality on held-out data: PSNR on Y vs bicubic (super-resolution), L1 to the style vs
    the identity and the best colour map (i2i-paint, i2i-woodcut, i2i-label), test accuracy (digits), and whether it meets its target."""
    import torch

    from pipeline.commands.errors import click_error
    from pipeline.training.evaluate import check, evaluate as run, task_for

    if threads:
        torch.set_num_threads(threads)
    try:
        task = task_for(name)
        from pipeline.models.registry import build

        model = build(name, weights=weights, trust_pickle=trust_pickle)
        report = run(model, task)
        lines = check(name, report)
    except ValueError as err:
        raise click_error(err) from None
    click.echo(f"{name} ({weights or 'default weights'}) on held-out data:")
    for line in report.lines + lines:
        click.echo(f"  {line}")
