"""`linterp svd`: the top-k singular triplets of a store's F(x0) (eigen-inputs / eigen-outputs; pipeline/svd.py)."""
from __future__ import annotations

import click

from pipeline.commands.options import SEED, THREADS, FiniteRange

from pipeline.svd import MODEL_BATCH, RANK_TOL  # RANK_TOL: singular values at or below RANK_TOL·s1 are 0


@click.command()
@click.argument("store_path", metavar="STORE", type=click.Path(file_okay=False))
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="How many singular triplets.")
@click.option("--method", type=click.Choice(["lanczos", "randomized"]), default="lanczos", show_default=True,
              help="Block Lanczos with thick restarts, or randomized subspace iteration (less memory, slower "
                   "on flat spectra).")
@click.option("--from-store", is_flag=True,
              help="Apply F from the stored matrix, shard by shard (default when the store is complete).")
@click.option("--from-model", is_flag=True,
              help="Apply F through the interpreter, rebuilt from the store's model, weights and x0 (default when "
                   "the store is not complete). Not with --from-store.")
@click.option("--tol", type=FiniteRange(0, 1, min_open=True, max_open=True), default=1e-6, show_default=True,
              help="Stop when every ‖Fᵀu − s v‖ / s is below this (or at the rounding floor).")
@click.option("--batch", type=click.IntRange(min=1), default=MODEL_BATCH, show_default=True,
              help="Vectors per network pass (--from-model); bounds the memory of the SVD.")
@click.option("--max-iter", type=click.IntRange(min=1), default=500, show_default=True,
              help="Most Lanczos / power steps.")
@click.option("--threads", type=THREADS, default=None,
              help="torch threads for --from-model (default: torch's; 1 is fastest on a busy machine).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the starting block.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="--from-model: the store's weight file, when it is neither the model's default nor in the "
                   "weight cache (checked against the sha256 the store records).")
@click.option("--model", "model", default=None, metavar="FILE.py[:FACTORY]",
              help="--from-model, your own model: where its file (or package.module) is now, when it is not in "
                   "the current folder (checked against the sha256 the store records).")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled Python objects.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def svd(store_path, k, method, from_store, from_model, tol, batch, max_iter, threads, seed, weights, model,
        trust_pickle, quiet):
    """Truncated SVD of F(x0), matrix-free; writes svd/S, svd/U (eigen-outputs) and svd/V (eigen-inputs)
    with the per-pair residuals into STORE. A killed run resumes from its checkpoint when rerun."""
    from pathlib import Path

    from pipeline import svd as svdmod
    from pipeline.commands.errors import click_error, writable_file
    from pipeline.interpreter import UnsupportedOperation
    from pipeline.store import StoreError, open_store

    if from_store and from_model:
        raise click.ClickException("--from-store and --from-model exclude each other: give one (or neither: the "
                                   "stored F when the store is complete, else the model)")
    source = "store" if from_store else "model" if from_model else "auto"
    if threads:
        import torch

        torch.set_num_threads(threads)

    try:
        open_store(store_path)  # a missing or foreign store is refused as such, before its folder is probed
        # the checkpoint is the first thing written: a read-only store is refused now, not after minutes of work
        writable_file(Path(store_path) / svdmod.CHECKPOINT, "the SVD's checkpoint")
        result = svdmod.svd_store(store_path, k, method=method, source=source, tol=tol, batch=batch,
                                  max_iter=max_iter, seed=seed, trust_pickle=trust_pickle, weights=weights,
                                  model=model, progress=not quiet)
    except (ValueError, StoreError, OSError, UnsupportedOperation) as err:  # SVDError, WeightsError, …
        raise click_error(err, writing=store_path) from err
    info = result.info
    worst = float(max(result.residual_forward.max(), result.residual_transpose.max()))
    state = "converged" if info["converged"] else f"NOT converged to {tol:g} after {info['iterations']} steps"
    click.echo(f"wrote svd of {store_path}: k={k}, s = {result.S[0]:.6g} … {result.S[-1]:.6g}; {state}; "
               f"max relative residual {worst:.2e}; {info['operator_passes']} vector passes in "
               f"{info['seconds']:.1f} s ({method})")
    rank = int((result.S > RANK_TOL * result.S[0]).sum())
    if rank == 0:  # nothing to factorise: every pair is arbitrary
        click.echo(f"warning: F is zero (no singular value above 0): the {k} pairs are arbitrary orthonormal "
                   f"vectors, not structure of F", err=True)
    elif rank < k:  # more pairs than F's numerical rank: those beyond it cannot converge
        click.echo(f"warning: only {rank} of the {k} singular values are above {RANK_TOL:g}·s1 (F's numerical "
                   f"rank); the pairs beyond it are rounding noise: use --k {rank}", err=True)
    elif not info["converged"]:
        per_block = 1 if method == "randomized" else -(-info["block"] // info["step_width"])
        if info["iterations"] >= max_iter * per_block:
            click.echo("warning: raise --max-iter (or --tol) for tighter singular vectors", err=True)
        else:  # stopped by the stall test (pipeline.svd.STALL_STEPS): more steps would not help
            click.echo(f"warning: the residuals stopped falling after {info['iterations']} steps, before --max-iter: "
                       + ("--method lanczos converges on flat spectra where this one stalls"
                          if method == "randomized" else "raise --tol, or --k past a gap in the spectrum"), err=True)
