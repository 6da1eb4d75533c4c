"""`linterp verify STORE...`: independent re-checks of stores (see pipeline/verify.py)."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import DEVICE, SEED
from pipeline.verify import DEFAULT_SAMPLES, TOLERANCES

_HELP = """Re-check STORES, finished or not, against a freshly built interpreter of the model they name.

Prints one summary line per store and one line per failed check; exits with 1 when a check failed or could
not run. An unfinished store is checked on its finished tasks. Checks and default tolerances (relative max
errors; integrity counts bad shards):

\b
  integrity       {integrity:<7g} every shard of F decodes; every finished task has the shards it counted;
                          x0 is the input the store was computed from (its recorded sha256)
  bounds          {bounds:<7g} compact stores: every column's stored error bounds fit the stored F
  reconstruction  {reconstruction:<7g} F·x0 + r = y0, F·x0 contracted from the stored F
  model           {model:<7g} the rebuilt model reproduces the stored y0 = f(x0)
  probe           {probe:<7g} F·v and Fᵀu (seeded random v, u): stored F against the interpreter
  rows            {rows:<7g} sampled rows against transposes Fᵀe ('columns' for rows stores: F·e)
  jacobian        {jacobian:<7g} piecewise-linear networks only: F against torch.func.jvp (vjp) of the model
  windows         {windows:<7g} windowed stores: sampled columns on the whole image against the stored ones

See docs/verify.md.""".format(**TOLERANCES)


@click.command(help=_HELP)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=DEFAULT_SAMPLES, show_default=True,
              help="Sampled rows or columns per check.")
@click.option("--seed", type=SEED,
              default=0, show_default=True, help="Seed of the samples and probes.")
@click.option("--write", is_flag=True,
              help="Record the result in the store: its verification, and complete = finished and passed.")
@click.option("--device", type=DEVICE, default=None,
              help="Where the rebuilt network runs (default: where the store was computed when that device is "
                   "here, else cpu). On another device, x0's forward pass rounds differently: ReLU masks near 0 "
                   "and statistics frozen from near-flat maps can differ, and the probes with them.")
@click.option("--weights", default=None,
              help="The weight file the stores were computed with, when it is neither a project default nor in the "
                   "weight cache (checked against the sha256 the store records).")
@click.option("--model", default=None, metavar="FILE.py[:FACTORY]",
              help="Your own model: where its file (or package.module) is now, when it is not in the current "
                   "folder (checked against the sha256 the store records).")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled Python objects.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(stores, samples, seed, write, device, weights, model, trust_pickle, quiet):
    import torch

    from pipeline import verify as checks
    from pipeline.commands.errors import one_line
    from pipeline.compute import resolve_device
    from pipeline.store import StoreError, open_store

    try:
        chosen = device and resolve_device(device)
    except ValueError as err:
        raise click.ClickException(one_line(err)) from None
    failed = False
    for path in stores:
        try:
            store = open_store(path, mode="r+" if write else "r")
            computed_on = store.attrs.get("timings", {}).get("device", "cpu")
            on_gpu = str(computed_on).startswith("cuda") and torch.cuda.is_available()  # "cuda" or "cuda:N"
            device = chosen or ("cuda" if on_gpu else "cpu")
            report = checks.verify_store(store, samples=samples, seed=seed, device=device, weights=weights,
                                         model=model, trust_pickle=trust_pickle, progress=not quiet)
        except StoreError as err:
            click.echo(f"{path}: cannot verify: {one_line(err)}")
            failed = True
            continue
        except Exception as err:  # noqa: BLE001 - a damaged store must give a line, not a traceback
            click.echo(f"{path}: cannot verify: {type(err).__name__}: {one_line(err)}")
            failed = True
            continue
        click.echo(f"{path}: {report.summary()}")
        if store.compact:
            from pipeline.compact import summary_line

            click.echo(f"  {summary_line(store)}")
        for check in report.failed:
            click.echo(f"  FAILED {check.line()}")
        if report.failed and device.split(":")[0] != str(computed_on).split(":")[0]:
            click.echo(f"  computed on {computed_on}, checked on {device}: rounding differs between devices; "
                       f"check on {computed_on} (--device {computed_on}) to tell it from a bad store")
        reasons: dict[str, list[str]] = {}  # checks that could not run for one reason share its line
        for check in report.not_run:
            reasons.setdefault(check.detail, []).append(check.name)
        for detail, names in reasons.items():
            click.echo(f"  NOT RUN {names[0]}: {detail}" + (f" (also {', '.join(names[1:])})" if names[1:] else ""))
        failed |= bool(report.failed or report.not_run)
        if write:  # after the results are shown, so that a store that cannot be written still gets them
            try:
                checks.record(store, report)
            except OSError as err:
                click.echo(f"  NOT WRITTEN: cannot record the result in the store ({err.strerror or one_line(err)})")
                failed = True
    if failed:
        raise SystemExit(1)
