"""Screenshots of an exported site in headless Debian chromium, at a view given as the site's own address.

``python -m pipeline.export.screenshot SITE OUT.png --view 'm=col&y=12&x=20&pin=1'`` opens SITE/index.html at
that address (the viewer's link format, docs/viewer.md), waits until everything in view is drawn and writes a PNG
of the page (``--width`` × ``--height`` CSS pixels), or of one model's panel (``--panel N``, from 0). The README's and docs' pictures are made this way, so anyone
can redo them at another pixel.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from pipeline.export.measure import ARGS


def screenshot(site: Path, out: Path, view: str = "", width: int = 1500, height: int = 1000,
               panel: int | None = None, chromium: str | None = None) -> Path:
    """Write a PNG of ``site`` opened at address ``view`` (without or with its leading ``#``) to ``out``: the
    whole page, or the panel of model ``panel`` (0 = the first)."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or shutil.which("chromium") or "/usr/bin/chromium"
    view = view.lstrip("#")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto((Path(site).resolve() / "index.html").as_uri() + (f"#{view}" if view else ""))
        page.wait_for_function("window.LINTERP && LINTERP.rendered > 0 && LINTERP.rendered === LINTERP.lastRequested",
                               timeout=60000)
        if panel is None:
            page.screenshot(path=str(out), full_page=True)
        else:  # the sticky tool bar would cover the top of a panel scrolled into view
            page.add_style_tag(content="header { position: static !important; }")
            page.locator("section.panel").nth(panel).screenshot(path=str(out))
        browser.close()
    return Path(out)


@click.command()
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--view", default="", help="The viewer's address, e.g. 'm=col&y=12&x=20&pin=1'.")
@click.option("--width", type=int, default=1500, show_default=True)
@click.option("--height", type=int, default=1000, show_default=True)
@click.option("--panel", type=int, default=None, help="Only the panel of this model (0 = the first).")
def main(site, out, view, width, height, panel):
    """Write a PNG of SITE opened at VIEW to OUT."""
    click.echo(screenshot(site, out, view, width, height, panel))


if __name__ == "__main__":
    main()
