"""`linterp geometry`: how the columns of F adapt to the image (adaptivity, flashlight, mass), per store.

The figures are measured on a sample of columns (pipeline/geometry.py, docs/geometry.md), written into each
store's ``geometry`` attribute and printed as a table, or as JSON with ``--json``.
"""
from __future__ import annotations

import json

import click

from pipeline.commands.options import SEED
from pipeline import geometry as geo


@click.command()
@click.argument("store_paths", metavar="STORE...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per store, not a table.")
@click.option("--samples", type=click.IntRange(min=2), default=geo.SAMPLES, show_default=True,
              help="Pixels sampled (their columns of every input channel are read).")
@click.option("--seed", type=SEED,
              default=0, show_default=True, help="Seed of the sample, folds and permutations.")
@click.option("--radius", type=click.IntRange(min=0), default=geo.RADIUS, show_default=True,
              help="Window radius in input pixels for adaptivity and the flashlight.")
@click.option("--global-radius", type=click.IntRange(min=0), default=geo.GLOBAL_RADIUS, show_default=True,
              help="Mass farther than this (input pixels, Chebyshev) counts as global.")
@click.option("--no-write", is_flag=True, help="Only print: leave the stores' attributes as they are.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def geometry(store_paths, as_json, samples, seed, radius, global_radius, no_write, quiet):
    """Measure how the columns of F(x0) adapt to the image in each STORE, write the figures into its
    `geometry` attribute and print them: adaptivity, flashlight top-1 / MRR against chance with the shuffled
    control, diagonal share, reach90, global share and the flat / edge mass ratio."""
    from pipeline.store import StoreError
    from pipeline.verify import open_complete

    from pipeline.commands.errors import one_line

    try:
        stores = [open_complete(p, mode="r" if no_write else "r+") for p in store_paths]
    except (ValueError, StoreError, OSError) as err:
        raise click.ClickException(one_line(err)) from err
    results, failed = [], None
    for path, store in zip(store_paths, stores):
        try:
            figures = geo.measure_store(store, samples=samples, seed=seed, radius=radius,
                                        global_radius=global_radius, progress=not quiet)
            if not no_write:
                store.update_attrs(geometry=figures)
        except (ValueError, StoreError, OSError) as err:  # GeometryError, StoreError, …
            message = one_line(err)
            failed = failed or (message if str(path) in message else f"{path}: {message}")
            continue
        attrs = store.attrs
        results.append({"store": str(path), "model": attrs.get("model"),
                        "compute_seconds": _compute_seconds(attrs), **figures})
    if results:  # the stores measured, even when another one could not be
        click.echo(json.dumps(results, indent=1) if as_json else table(results))
    if failed:
        raise click.ClickException(failed)


def _compute_seconds(attrs: dict) -> float | None:
    """Wall seconds the store's F took, when it was computed in one run (else unknown: None)."""
    timings = attrs.get("timings") or {}
    return timings.get("last_run_seconds") if timings.get("runs") == 1 else None


def _num(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    """The figures of several stores as an aligned text table (one row per store)."""
    rows = [("store", "model", "n", "adaptivity", "flashlight top-1 (chance)", "MRR (chance)", "control top-1", "p",
             "diagonal", "reach90", "global", "flat/edge", "seconds")]
    for r in results:
        cost = f"{r['seconds']:.1f}"
        if r.get("compute_seconds"):
            cost += f" ({100 * r['seconds'] / r['compute_seconds']:.0f} % of compute)"
        rows.append((r["store"], str(r["model"]), str(r["samples"]), _num(r["adaptivity"]),
                     f"{_num(r['flashlight_top1'])} ({_num(r['flashlight_chance'])})",
                     f"{_num(r['flashlight_mrr'])} ({_num(r['flashlight_mrr_chance'])})",
                     _num(r["flashlight_control_top1"]), _num(r["flashlight_p"]), _num(r["diagonal_share"]),
                     _num(r["reach90"], 1), f"{_num(r['global_share'])} (>{r['global_radius']})",
                     _num(r["flat_edge_ratio"]), cost))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("n: sampled pixels (the flashlight's candidates); flashlight: the location of a pixel recovered from "
                 "its column among them; control: the same with the locations shuffled; see docs/geometry.md")
    return "\n".join(lines)
