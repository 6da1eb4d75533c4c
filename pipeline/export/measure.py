"""Measure an exported site: files, bytes, and hover-to-display latency in headless Debian chromium.

``python -m pipeline.export.measure SITE [--moves 200]`` prints a JSON summary. The latency of one hover is
the time from the mouse event (``event.timeStamp``) to the first animation frame after the filter has been
drawn (recorded by the viewer in ``LINTERP.latencies``); the moves walk the image like a user does (neighbour
steps with occasional jumps), alternating between the input (columns) and the output (rows). Memory: the page's
JS heap plus its array buffers after the walk.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np

from pipeline.export.site import site_size

#: headless Debian chromium, with nothing that phones home
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def walk(page, moves: int = 200, seed: int = 0) -> dict:
    """Hover ``moves`` pixels of the first panel of an open viewer page, as a user does: neighbour steps with
    occasional jumps, 25 moves on the input (columns), then 25 on the output (rows), and so on; pixels out of
    view are brought into view first. Returns the latencies (ms) and the memory the page holds afterwards."""
    rng = np.random.default_rng(seed)
    shapes = page.evaluate("[LINTERP.shown(0, 'in'), LINTERP.shown(0, 'out')]")
    page.evaluate("LINTERP.latencies.length = 0")
    pos = {"in": [shapes[0]["h"] // 2, shapes[0]["w"] // 2], "out": [shapes[1]["h"] // 2, shapes[1]["w"] // 2]}
    state = page.evaluate("LINTERP.state()")
    sel = (state["dom"], state["y"], state["x"])  # the viewer's selection: a move elsewhere redraws
    for i in range(moves):
        dom = "in" if (i // 25) % 2 == 0 else "out"
        info = shapes[0] if dom == "in" else shapes[1]
        y, x = pos[dom]
        while (dom, y, x) == sel:
            if rng.random() < 0.1:
                y, x = int(rng.integers(info["h"])), int(rng.integers(info["w"]))
            else:
                y = int(np.clip(pos[dom][0] + rng.integers(-1, 2), 0, info["h"] - 1))
                x = int(np.clip(pos[dom][1] + rng.integers(-1, 2), 0, info["w"] - 1))
        pos[dom], sel = [y, x], (dom, y, x)
        point = page.evaluate(f"LINTERP.clientPoint(0, '{dom}', {y}, {x})")
        if point is None:  # out of view: pan there first (not timed)
            page.evaluate(f"LINTERP.reveal('{dom}', {y}, {x})")
            page.wait_for_function("LINTERP.rendered === LINTERP.lastRequested", timeout=30000)
            point = page.evaluate(f"LINTERP.clientPoint(0, '{dom}', {y}, {x})")
        before = page.evaluate("LINTERP.latencies.length")
        page.mouse.move(point["x"], point["y"])
        try:
            page.wait_for_function(f"LINTERP.latencies.length > {before}", timeout=30000)
        except Exception as err:
            raise RuntimeError(f"no display after moving to {dom} pixel ({y}, {x}) at {point}: viewer state "
                               f"{page.evaluate('LINTERP.state()')}, shown {page.evaluate(f'LINTERP.shown(0, {dom!r})')}"
                               ) from err
    lat = np.array(page.evaluate("LINTERP.latencies"))
    return {"moves": moves, "measured": int(lat.size), "median_ms": float(np.median(lat)),
            "p90_ms": float(np.percentile(lat, 90)), "max_ms": float(lat.max()),
            "first_ms": float(lat[0]) if lat.size else None, **page_memory(page)}


def page_memory(page) -> dict:
    """Memory of a page in MiB after a garbage collection: the JS heap, array buffers (decoded sheets) and their sum
    (Chromium DevTools protocol), and what the viewer's caches hold."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    use = cdp.send("Runtime.getHeapUsage")
    cdp.detach()
    mib = 1 / 2**20
    heap, buffers = use["usedSize"] * mib, use.get("backingStorageSize", 0) * mib
    caches = page.evaluate("LINTERP.memory()")
    return {"js_heap_mib": heap, "array_buffers_mib": buffers, "js_total_mib": heap + buffers,
            "cached_sheets": caches["sheets"], "cached_sheet_mib": caches["sheetBytes"] * mib}


def hover_latency(site: Path, moves: int = 200, seed: int = 0, chromium: str | None = None) -> dict:
    """Median / p90 / max hover-to-display latency (ms) over ``moves`` mouse moves on the first panel, and the
    page's memory afterwards (see :func:`walk`)."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto((Path(site).resolve() / "index.html").as_uri())
        page.wait_for_function("window.LINTERP && LINTERP.rendered > 0", timeout=30000)
        result = walk(page, moves, seed)
        browser.close()
    return result


@click.command()
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--moves", type=int, default=200, show_default=True)
def main(site, moves):
    """Print files, bytes and hover latency of SITE as JSON."""
    files, size = site_size(site)
    click.echo(json.dumps({"files": files, "bytes": size, **hover_latency(site, moves)}, indent=1))


if __name__ == "__main__":
    main()
