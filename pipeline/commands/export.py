"""`linterp export` (static site of rows, columns, residual and eigen-images) and `linterp video`."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import DEVICE, FiniteRange

from pipeline.export.site import SCHEDULERS


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="site folder to write")
@click.option("--normalise", type=click.Choice(["filter", "global"]), default="filter", show_default=True,
              help="colour scale: each filter at its own ±max, or one scale per kind and channel pair")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="processes", show_default=True,
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
        raise click_error(err, writing=out) from None
    click.echo(f"wrote {out / 'index.html'}: {s['filters']} filters in {s['seconds']:.1f} s "
               f"({s['filters_per_s']:.0f} filters/s); {s['files']} files, {s['bytes'] / 2**20:.2f} MiB"
               + (f"; {s['tasks'] - s['rendered_tasks']} of {s['tasks']} tasks were already done"
                  if s["rendered_tasks"] < s["tasks"] else ""))


@click.command()
@click.argument("stores", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="WALK.mp4 (H.264 with an English subtitle track), or WALK.gif")
@click.option("--film", type=click.Choice(["FilterMatrix_SR", "FilterMatrix_I2I"]), default=None,
              help="the paper's video: the stores of its bundles (reused when they exist, else computed)")
@click.option("--defaults", is_flag=True, help="--film: the project's stand-ins instead of official weights")
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="--film: input image (default: the "
              "built-in astronaut face)")
@click.option("--crop", default=None, help="--film: X,Y,W,H or 'full' (default: the bundles' crop)")
@click.option("--duration", type=FiniteRange(min=0, min_open=True), default=30.0, show_default=True,
              help="seconds")
@click.option("--fps", type=FiniteRange(min=0, min_open=True), default=None,
              help="frames per second (default: 30 for MP4, 10 for GIF)")
@click.option("--zoom", type=click.IntRange(min=1), default=None,
              help="screen pixels per output pixel (default: the largest that keeps frames within 1280×720, "
                   "panels wrapped into rows when needed)")
@click.option("--lossless", is_flag=True, help="MP4 in lossless RGB H.264 (libx264rgb -qp 0): exact colours")
@click.option("--subtitles", "subtitles_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the subtitles to this .vtt or .srt file")
@click.option("--still", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write one frame (the middle of the walk of columns) to this PNG file")
@click.option("--trust-pickle", is_flag=True, help="--film: allow weight files that hold pickled Python objects")
@click.option("--device", type=DEVICE, default="auto", show_default=True,
              help="--film: where missing stores are computed")
@click.option("--quiet", is_flag=True, help="no progress bars")
def video(stores, out, film, defaults, image, crop, duration, fps, zoom, lossless, subtitles_out, still,
          trust_pickle, device, quiet):
    """A video of STORES (one image, one panel per model): columns and rows along a walk over an edge, a flat
    area and a texture, then the eigen-images, with subtitles that give the measured figures.

    Or --film FilterMatrix_SR / FilterMatrix_I2I: the paper's videos from the stores of its bundles.
    """
    from pipeline.commands.errors import click_error
    from pipeline.export.video import write_video
    from pipeline.store import StoreError

    if bool(stores) == bool(film):
        raise click.ClickException("give either STORES or --film NAME")
    film_only = [name for name, given in (("--defaults", defaults), ("--image", image is not None),
                                          ("--crop", crop is not None), ("--trust-pickle", trust_pickle),
                                          ("--device", device != "auto")) if given]
    if stores and film_only:
        raise click.ClickException(f"{', '.join(film_only)}: only with --film (STORES are videoed as they are)")
    names, notes = None, []
    try:
        if film:
            from pipeline.films import film_stores

            stores, names, notes = film_stores(film, defaults=defaults, image=image, crop=crop,
                                               trust_pickle=trust_pickle, device=device, progress=not quiet,
                                               echo=lambda m: click.echo(m, err=True))
        summary = write_video(stores, out, duration=duration, fps=fps, zoom=zoom, lossless=lossless,
                              subtitles_out=subtitles_out, still=still, names=names, notes=tuple(notes),
                              progress=not quiet)
    except (StoreError, ValueError, OSError) as err:  # VideoError, BundleError, EncoderError, ExportError, …
        raise click_error(err, writing=out) from None
    h, w = summary["size"]
    held = ([] if Path(summary["path"]).suffix.lower() == ".gif" else ["in the video"]) + (
        [f"in {subtitles_out}"] if subtitles_out else [])
    cues = (f"{summary['cues']} subtitle cues ({' and '.join(held)})" if held
            else "no subtitles (a GIF holds none: --subtitles FILE.vtt writes them)")
    click.echo(f"wrote {summary['path']}: {summary['duration']:.1f} s, {summary['frames']} frames of {w}×{h}, "
               f"{cues}, in {summary['seconds']:.1f} s")
