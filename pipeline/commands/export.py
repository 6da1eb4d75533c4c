"""`linterp export` (static site of rows, columns, residual and eigen-images) and `linterp video`."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.export.site import SCHEDULERS


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="site folder to write")
@click.option("--normalise", type=click.Choice(["filter", "global"]), default="filter", show_default=True,
              help="colour scale: each filter at its own ±max, or one scale per kind and channel pair")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="threads", show_default=True,
              help="dask scheduler (distributed: a local cluster of --workers processes)")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="dask workers (default: one per core)")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--allow-unverified", is_flag=True,
              help="Export stores whose verification failed or never ran (the site shows a warning on them).")
def export(stores, out, normalise, scheduler, workers, progress, allow_unverified):
    """Export STORES (one image; one panel per model) as an offline site: open OUT/index.html.

    Only verified stores are exported (see `linterp verify`), unless --allow-unverified is given."""
    from pipeline.commands.errors import click_error
    from pipeline.export.site import export_site
    from pipeline.store import StoreError

    try:
        s = export_site(stores, out, normalise=normalise, scheduler=scheduler, workers=workers,
                        progress=progress, allow_unverified=allow_unverified)
    except (StoreError, ValueError, OSError) as err:  # ExportError, a folder that cannot be written, …
        raise click_error(err) from None
    click.echo(f"wrote {out / 'index.html'}: {s['filters']} filters in {s['seconds']:.1f} s "
               f"({s['filters_per_s']:.0f} filters/s); {s['files']} files, {s['bytes'] / 2**20:.2f} MiB"
               + (f"; {s['tasks'] - s['rendered_tasks']} of {s['tasks']} tasks were already done"
                  if s["rendered_tasks"] < s["tasks"] else ""))


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="walk.mp4 (or .gif)")
@click.option("--frames", type=int, default=120, show_default=True, help="pixels visited along the path")
@click.option("--fps", type=int, default=12, show_default=True)
@click.option("--zoom", type=int, default=None, help="integer magnification (default: about 512 px wide)")
@click.option("--format", "fmt", type=click.Choice(["auto", "mp4", "gif"]), default="auto", show_default=True,
              help="auto: MP4 when an encoder is installed, else GIF")
@click.option("--progress/--no-progress", default=True, show_default=True)
def video(store, out, frames, fps, zoom, fmt, progress):
    """Flashlight walk of STORE's columns along a serpentine path, input and output side by side."""
    from pipeline.commands.errors import click_error
    from pipeline.export.video import write_video
    from pipeline.store import StoreError, open_store

    if frames < 1 or fps < 1 or (zoom is not None and zoom < 1):
        raise click.ClickException("--frames, --fps and --zoom must be positive")
    try:
        st = open_store(store, require_complete=True)
        written = write_video(st, out, frames=frames, fps=fps, zoom=zoom, fmt=fmt, progress=progress)
    except (StoreError, ValueError, OSError) as err:
        raise click_error(err) from None
    note = "" if written.suffix == Path(out).suffix else " (no MP4 encoder installed: wrote a GIF)"
    click.echo(f"wrote {written}{note}")
