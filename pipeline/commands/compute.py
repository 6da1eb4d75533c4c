"""`linterp compute`: materialise F(x0) of a model at an image into a Zarr store (see pipeline/compute.py)."""
from __future__ import annotations

import click

from pipeline.commands.options import DEVICE, FiniteRange

from pipeline.commands.models import model_and_image_options
from pipeline.progress import counted


@click.command()
@model_and_image_options
@click.option("--out", "out_path", required=True, type=click.Path(file_okay=False),
              help="The store (a folder, e.g. face.zarr); an unfinished store of the same inputs is resumed.")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help="Where the network runs (cuda: two worker threads per GPU).")
@click.option("--scheduler", default="threads", show_default=True,
              help="threads, processes, or the address of a dask.distributed scheduler (tcp://HOST:PORT).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local workers (default: one per core, or two per GPU).")
@click.option("--tile", type=click.IntRange(min=1), default=None,
              help="Input tile side in pixels: one task per tile (default: the largest that fits 512 MiB).")
@click.option("--mode", type=click.Choice(["auto", "columns", "rows"]), default="auto", show_default=True,
              help="Compute columns (forward) or rows (transpose); auto picks the cheaper side.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Columns or rows per pass (default 16).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="Precision of the stored F (float16/bfloat16: a compact store whose error per "
                                      "column is stored; see docs/compact.md).")
@click.option("--support-tol", type=FiniteRange(0, 1, max_open=True), default=None,
              help="Keep, per column, the smallest window around its pixel that holds all but this fraction of the "
                   "column's L1 mass (e.g. 1e-6); the dropped mass is stored. Default: the whole support.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def compute(name, weights, trust_pickle, image_path, crop_text, model_args, input_range, out_path, device,
            scheduler, workers, tile, mode, batch, dtype, support_tol, quiet):
    """Compute every row and column of F(x0) into a chunked, compressed Zarr store, then verify it.

    Rerunning the same command after an interruption resumes the store; a store made from another model,
    weights, image or crop (or a model file that has changed since) is refused.
    """
    from pipeline import compute as comp
    from pipeline.commands.errors import click_error, memory_error, out_of_memory
    from pipeline.interpreter import UnsupportedOperation
    from pipeline.models.user import parse_args
    from pipeline.sources import model_source, refuse_changed_model
    from pipeline.store import StoreError

    try:
        source, identity, attrs = model_source(name, weights, trust_pickle, image_path, crop_text,
                                               parse_args(model_args), input_range)
        refuse_changed_model(out_path, identity)
        store = comp.compute(out_path, source, identity=identity, attrs=attrs, tile=tile, mode=mode,
                             batch=batch or comp.DEFAULT_BATCH, scheduler=scheduler, workers=workers,
                             device=device, progress=not quiet, dtype=dtype, support_tol=support_tol)
    except (ValueError, StoreError, OSError, UnsupportedOperation) as err:  # ImageError, WeightsError, …
        raise click_error(err, writing=out_path) from err
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise memory_error(err, "compute a part of the image (--crop X,Y,W,H), or lower --tile or --batch; "
                                "rerunning resumes") from None
    attrs = store.attrs
    figures, timings = attrs.verification, attrs.timings
    checks = ", ".join(f"{c['name']} {c['value']:.2g}" for c in figures.get("checks", []) if c["value"] is not None)
    click.echo(f"wrote {out_path}: F {tuple(store.F.shape)} ({attrs.mode}, tile {attrs.tile}), "
               f"{timings['last_run_tasks']} {counted(timings['last_run_tasks'], 'tasks')} in "
               f"{timings['last_run_seconds']:.1f} s; "
               f"verification {figures.get('status', 'unverified')} ({checks})")
    if store.compact:
        from pipeline.compact import summary_line

        click.echo(summary_line(store))
