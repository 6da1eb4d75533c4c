"""`linterp bundle`: the demo site and the paper's archives in one command (see pipeline/bundle.py)."""
from __future__ import annotations

import click

from pipeline.commands.options import DEVICE, FiniteRange


@click.command()
@click.argument("name", metavar="NAME")
@click.option("--out", required=True, type=click.Path(),
              help="A .zip archive, or a folder (the site goes to OUT/site, the stores to OUT/stores).")
@click.option("--image", type=click.Path(dir_okay=False), default=None,
              help="Input image file (default: the built-in astronaut face).")
@click.option("--crop", default=None,
              help="X,Y,W,H in pixels, or 'full' (default: the bundle's crop of the default image; a given "
                   "--image is used whole).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Local weight file of the bundle's model (instead of the official download).")
@click.option("--defaults", is_flag=True, help="Use the project's trained stand-ins instead of official weights.")
@click.option("--store", "with_store", is_flag=True, help="Put the Zarr stores into the archive too.")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Work folder of a .zip build (default: out/bundles/NAME-<hash of the inputs>); reused on reruns.")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled Python objects.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--scheduler", default="threads", show_default=True,
              help="threads, processes, or a dask.distributed scheduler address (tcp://HOST:PORT).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local workers (default: one per core).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="Precision of the stored F (see `linterp compute --dtype`).")
@click.option("--support-tol", type=FiniteRange(0, 1, max_open=True), default=None,
              help="Keep each column's smallest window holding all but this fraction of its L1 mass "
                   "(see `linterp compute --support-tol`).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bundle(name, out, image, crop, weights, defaults, with_store, work, trust_pickle, device, scheduler, workers,
           dtype, support_tol, quiet):
    """Build bundle NAME: compute F(x0) for its models, their SVD, one combined site and (for .zip) an archive.

    NAME is demo, Bicubic4x, 4L-PixelShuffle, EDSR4x, CycleGAN-VanGogh, CycleGAN-Ukiyoe or CycleGAN-Photo2Label.
    The last line printed is the path of index.html (folder output) or of the archive. Reruns reuse finished work.
    """
    from pipeline import bundle as bundles
    from pipeline.commands.errors import click_error, memory_error, out_of_memory
    from pipeline.store import StoreError

    try:
        result = bundles.build(name, out, image=image, crop=crop, weights=weights, defaults=defaults,
                               store=with_store, work=work, trust_pickle=trust_pickle, device=device,
                               scheduler=scheduler, workers=workers, progress=not quiet,
                               command=command_line(click.get_current_context()), dtype=dtype,
                               support_tol=support_tol, export_scheduler="processes",
                               echo=lambda m: click.echo(m, err=True))
    except (ValueError, StoreError, OSError) as err:  # BundleError, ImageError, WeightsError, ExportError, …
        raise click_error(err, writing=out) from err
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise memory_error(err, "use a smaller --crop X,Y,W,H (make: CROP=…); rerunning resumes") from None
    if result.suffix == ".zip":
        click.echo(f"{result} ({result.stat().st_size / 2**20:.1f} MiB)", err=True)
    click.echo(str(result))


def command_line(ctx: click.Context) -> str:
    """The equivalent `linterp bundle` command of this call, for README.txt (options that were set, in order;
    files and folders by their base names, a cluster without its address, so that the README does not tell where
    the bundle was built)."""
    import shlex
    from pathlib import Path

    words = ["linterp", "bundle", ctx.params["name"]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "name" or value in (None, False) or value == param.default:
            continue
        if isinstance(param.type, click.Path):
            value = Path(value).name
        elif param.name == "scheduler" and "://" in value:  # a cluster's address: its scheme only
            value = value.split("://", 1)[0] + "://HOST:PORT"
        flag = max(param.opts, key=len)
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)
