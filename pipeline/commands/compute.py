"""`linterp compute`: materialise F(x0) of a model at an image into a Zarr store (see pipeline/compute.py)."""
from __future__ import annotations

import click


@click.command()
@click.option("--model", "name", required=True, help="Registry name (see `linterp models`).")
@click.option("--weights", default=None, help="Weight file, or 'random'; default: the model's default weights.")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled Python objects.")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help="Input image (PNG, JPEG, …); default: the built-in astronaut face.")
@click.option("--crop", "crop_text", default=None, help="Crop the input first: X,Y,W,H in pixels.")
@click.option("--out", "out_path", required=True, type=click.Path(file_okay=False),
              help="The store (a folder, e.g. face.zarr); an unfinished store of the same inputs is resumed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the network runs (cuda: one worker per GPU).")
@click.option("--scheduler", default="threads", show_default=True,
              help="threads, processes, or the address of a dask.distributed scheduler (tcp://HOST:PORT).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local workers (default: one per core, or one per GPU).")
@click.option("--tile", type=click.IntRange(min=1), default=None,
              help="Input tile side in pixels: one task per tile (default: the largest that fits 512 MiB).")
@click.option("--mode", type=click.Choice(["auto", "columns", "rows"]), default="auto", show_default=True,
              help="Compute columns (forward) or rows (transpose); auto picks the cheaper side.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Columns or rows per pass (default 16).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def compute(name, weights, trust_pickle, image_path, crop_text, out_path, device, scheduler, workers, tile, mode,
            batch, quiet):
    """Compute every row and column of F(x0) into a chunked, compressed Zarr store, then verify it.

    Rerunning the same command after an interruption resumes the store; a store made from another model,
    weights, image or crop is refused.
    """
    from pipeline import compute as comp
    from pipeline.commands.errors import click_error
    from pipeline.store import StoreError

    try:
        source, identity, attrs = cli_source(name, weights, trust_pickle, image_path, crop_text)
        store = comp.compute(out_path, source, identity=identity, attrs=attrs, tile=tile, mode=mode,
                             batch=batch or comp.DEFAULT_BATCH, scheduler=scheduler, workers=workers,
                             device=device, progress=not quiet)
    except (ValueError, StoreError, OSError) as err:  # ImageError, WeightsError, UnsupportedOperation, …
        raise click_error(err) from err
    figures, timings = store.attrs["verification"], store.attrs["timings"]
    checks = ", ".join(f"{c['name']} {c['value']:.2g}" for c in figures.get("checks", []) if c["value"] is not None)
    click.echo(f"wrote {out_path}: F {tuple(store.F.shape)} ({store.attrs['mode']}, tile {store.attrs['tile']}), "
               f"{timings['last_run_tasks']} tasks in {timings['last_run_seconds']:.1f} s; "
               f"verification {figures.get('status', 'unverified')} ({checks})")


def cli_source(name, weights, trust_pickle, image_path, crop_text):
    """(Source, identity, attrs) for a registry model at an image file (or the default image) and crop."""
    import functools
    import hashlib
    from pathlib import Path

    import numpy as np

    from pipeline import images
    from pipeline.compute import Source, source_key
    from pipeline.models import build, spec
    from pipeline.models.registry import NO_PARAMETERS, default_weights_path
    from pipeline.models.weights import file_sha256

    model_spec = spec(name)
    if image_path is None:
        image_name, img = images.default_image()
        image_sha = hashlib.sha256(img.tobytes()).hexdigest()
    else:
        image_name, img, image_sha = str(image_path), images.load_image(image_path), file_sha256(image_path)
    box = images.parse_crop(crop_text) if crop_text else None
    if box:
        img = images.crop(img, box)
    x0 = images.to_input(img, model_spec).numpy()
    if weights is not None and str(weights) == "random":
        weights_name, weights_sha = "random", "random"
    elif weights is None and model_spec.weights == NO_PARAMETERS:
        weights_name, weights_sha = None, None
    else:
        path = default_weights_path(model_spec) if weights is None else Path(weights).resolve()
        weights_name, weights_sha = str(path), file_sha256(path)
        weights = str(path)  # absolute, so that worker processes find it
    identity = {"model": name, "weights_sha256": weights_sha, "image_sha256": image_sha,
                "crop": list(box) if box else None, "x0_sha256": hashlib.sha256(x0.tobytes()).hexdigest()}
    attrs = {"model": name, "task": model_spec.task, "scale": model_spec.scale, "colour": model_spec.colour,
             "value_range": list(model_spec.value_range), "weights": weights_name, "weights_sha256": weights_sha,
             "image": image_name, "image_sha256": image_sha, "crop": list(box) if box else None}
    source = Source(functools.partial(build, name, weights, trust_pickle=trust_pickle), x0, source_key(identity))
    return source, identity, attrs
