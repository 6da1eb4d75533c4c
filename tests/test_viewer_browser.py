"""The exported site in a real browser (Debian chromium, headless, through Playwright), opened from file://.

Moves the mouse to given input and output pixels, decodes the filter drawn on the canvas back to values through
the colour table and compares it with the stored column / row of F; checks pinning, keys, the URL hash, the
shared cursor of two models, that no request leaves the site folder and that the console stays clean.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.export import render
from pipeline.export.measure import ARGS
from pipeline.export.site import export_site, with_sum
from test_export import linear_upscaler_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

#: without chromium the browser tests are skipped on a developer's machine, but fail in CI (`make system` installs it)
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                    reason="Debian chromium is not installed (`make system` installs it)")
pytestmark = needs_chromium


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two models of one 16×16 image: bicubic ×4 and bilinear ×4 (one panel each, shared cursor)."""
    root = tmp_path_factory.mktemp("browser")
    a, fa = linear_upscaler_store(root / "bicubic.zarr", mode="bicubic")
    b, fb = linear_upscaler_store(root / "bilinear.zarr", mode="bilinear")
    export_site([a.path, b.path], root / "site", progress=False)
    return root / "site", (a, fa), (b, fb)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A viewer page with its console messages and requests recorded."""

    def __init__(self, browser, site: Path, hash_: str = ""):
        self.site = site
        self.page = browser.new_page(viewport={"width": 1500, "height": 1000})
        self.messages, self.requests = [], []
        self.page.on("console", lambda m: self.messages.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.messages.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto((site / "index.html").as_uri() + hash_)
        self.page.wait_for_function("window.LINTERP && LINTERP.rendered > 0", timeout=15000)

    def wait_render(self, before: int):
        self.page.wait_for_function(f"LINTERP.rendered > {before} && LINTERP.rendered === LINTERP.lastRequested",
                                    timeout=15000)

    def settle(self):
        """Wait until what was asked for last is drawn."""
        self.page.wait_for_function("LINTERP.rendered === LINTERP.lastRequested", timeout=15000)

    def rendered(self) -> int:
        return self.page.evaluate("LINTERP.rendered")

    def hover(self, panel: int, dom: str, y: int, x: int, click: bool = False):
        """Move the mouse to the centre of pixel (y, x) of a panel's input ('in') or output ('out') canvas."""
        before = self.rendered()
        point = self.page.evaluate(f"LINTERP.clientPoint({panel}, '{dom}', {y}, {x})")
        assert point is not None, f"pixel ({y}, {x}) of {dom} is not in view"
        (self.page.mouse.click if click else self.page.mouse.move)(point["x"], point["y"])
        return before

    def shown_values(self, panel: int, dom: str) -> tuple[np.ndarray, float]:
        """The signed values drawn on a canvas, decoded from its colours at the pixel centres: (H, W) when the
        whole image is in view, else the part in view (see ``window``)."""
        info = self.page.evaluate(f"LINTERP.shown({panel}, '{dom}')")
        rgb = np.array(self.page.evaluate(f"""(() => {{
            const c = document.querySelector('section.panel:nth-of-type({panel + 1}) figure.view.{dom} canvas.image');
            const z = {info['zoom']}, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
            for (let y = 0; y < {info['vh']}; y++) for (let x = 0; x < {info['vw']}; x++) {{
                const i = 4 * ((y * z + (z >> 1)) * c.width + x * z + (z >> 1)); out.push([d[i], d[i + 1], d[i + 2]]);
            }}
            return out; }})()"""), np.uint8).reshape(info["vh"], info["vw"], 3)
        return render.dequantise(render.decode_colours(rgb), info["scale"]), info["scale"]

    def window(self, panel: int, dom: str) -> tuple[slice, slice]:
        """The image pixels in view on a canvas: (rows, columns) slices."""
        info = self.page.evaluate(f"LINTERP.shown({panel}, '{dom}')")
        return slice(info["oy"], info["oy"] + info["vh"]), slice(info["ox"], info["ox"] + info["vw"])

    def clean(self):
        errors = [m for m in self.messages if m[0] in ("error", "pageerror")]
        assert not errors, errors
        root = self.site.as_uri() + "/"
        outside = [u for u in self.requests if not (u.startswith(root) or u.startswith("data:"))]
        assert not outside, outside


def test_hovered_pixels_show_the_stored_filters(browser, site, tmp_path):
    folder, (a, fa), (b, fb) = site
    page = Page(browser, folder)
    # input pixel (5, 11) of the first model: its column over the output domain, R -> R
    before = page.hover(0, "in", 5, 11)
    page.wait_render(before)
    for panel, dense in ((0, fa), (1, fb)):  # the shared cursor drives both panels
        got, scale = page.shown_values(panel, "out")
        want = dense[0, :, :, 0, 5, 11]
        assert scale == pytest.approx(np.abs(want).max(), rel=1e-6)
        assert (np.abs(got - want) <= scale / 254 + 1e-6).all()
    # output pixel (37, 20): its row over the input domain
    before = page.hover(0, "out", 37, 20)
    page.wait_render(before)
    got, scale = page.shown_values(0, "in")
    want = fa[0, 37, 20, 0]
    assert (np.abs(got - want) <= scale / 254 + 1e-6).all() and np.abs(want).max() > 0
    state = page.page.evaluate("LINTERP.state()")
    assert (state["dom"], state["y"], state["x"]) == ("out", 37, 20)
    page.page.wait_for_function("location.hash.includes('m=row&y=37&x=20')")  # the address follows the view
    # channel Σ → Σ: the row summed over output... here: source channel Σ (sum of the rows of R, G, B outputs)
    page.page.select_option("#src-channel", label="Σ")
    page.page.select_option("#dst-channel", label="G")
    page.settle()
    got, scale = page.shown_values(0, "in")
    want = with_sum(fa[:, 37, 20])[3][1]  # Σ over output channels of the rows, input channel G
    assert (np.abs(got - want) <= scale / 254 + 1e-6).all()
    page.page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 10000
    page.clean()


def test_pin_keys_and_link(browser, site):
    folder, (a, fa), _ = site
    page = Page(browser, folder)
    before = page.hover(0, "in", 3, 4, click=True)  # click pins input pixel (3, 4)
    page.wait_render(before)
    page.hover(0, "out", 10, 10)  # hovering elsewhere now only reads values
    page.page.wait_for_timeout(100)
    state = page.page.evaluate("LINTERP.state()")
    assert state["pinned"] and (state["dom"], state["y"], state["x"]) == ("in", 3, 4)
    readout = page.page.locator("section.panel:nth-of-type(1) .readout").inner_text()
    value = float(readout.split("): ")[-1])
    scale = np.abs(fa[0, :, :, 0, 3, 4]).max()
    assert abs(value - fa[0, 10, 10, 0, 3, 4]) <= scale / 254 + 1e-6
    before = page.rendered()
    page.page.keyboard.press("ArrowRight")
    page.page.keyboard.press("ArrowDown")
    page.wait_render(before)
    got, scale = page.shown_values(0, "out")
    assert (np.abs(got - fa[0, :, :, 0, 4, 5]) <= scale / 254 + 1e-6).all()
    page.page.keyboard.press("t")  # switch to the row of the matching output pixel
    page.settle()
    state = page.page.evaluate("LINTERP.state()")
    assert state["dom"] == "out" and (state["y"], state["x"]) == (4 * 4 + 2, 5 * 4 + 2)
    page.page.wait_for_function("location.hash.includes('m=row&y=18&x=22')")
    url = page.page.url
    page.clean()
    # the link opens the same view
    again = Page(browser, folder, "#" + url.split("#", 1)[1])
    assert again.page.evaluate("LINTERP.state()") == page.page.evaluate("LINTERP.state()")
    got, scale = again.shown_values(0, "in")
    assert (np.abs(got - fa[0, 18, 22, 0]) <= scale / 254 + 1e-6).all()
    # y0, F·x0 and residual toggles
    for key, image in (("l", np.tensordot(fa, a.x0, axes=3)), ("r", a.residual)):
        again.page.keyboard.press(key)
        again.settle()
        got, scale = again.shown_values(0, "out")
        want = image[0]
        assert (np.abs(got - want) <= max(scale, 1e-12) / 254 + 1e-6).all()
    again.clean()


def test_mixed_channels_and_eigen_images(browser, tmp_path):
    """An RGB model beside a one-channel (Y) model with an SVD: the selectors offer R, G, B, Σ; the Y panel
    shows its only channel; ']' shows the first eigen-pair, equal to the stored svd/U and svd/V."""
    from pipeline.store import open_store

    rgb, f_rgb = linear_upscaler_store(tmp_path / "rgb.zarr", mode="bicubic", c=3, h=8, w=8, tile=4)
    y, f_y = linear_upscaler_store(tmp_path / "y.zarr", mode="bilinear", c=1, h=8, w=8, tile=4)
    mat = f_y.reshape(16 * 16 * 4, 64).astype(np.float64)
    U, S, Vt = np.linalg.svd(mat, full_matrices=False)
    k = 5
    open_store(y.path, mode="r+").write_svd(S[:k], U[:, :k].T, Vt[:k])
    export_site([rgb.path, y.path], tmp_path / "site", progress=False)
    page = Page(browser, tmp_path / "site", "#m=col&y=2&x=6&s=3&t=1&pin=1")
    options = page.page.locator("#src-channel option").all_inner_texts()
    assert options == ["R", "G", "B", "Σ"]
    got, scale = page.shown_values(0, "out")
    want = with_sum(with_sum(np.moveaxis(f_rgb, (3, 4, 5), (0, 1, 2))[:, 2, 6])[3])[1]  # Σ inputs -> G
    assert (np.abs(got - want) <= scale / 254 + 1e-6).all()
    got, scale = page.shown_values(1, "out")  # the Y model: its only channel
    assert (np.abs(got - f_y[0, :, :, 0, 2, 6]) <= scale / 254 + 1e-6).all()
    page.page.keyboard.press("]")
    page.page.wait_for_function("LINTERP.rendered === LINTERP.lastRequested && LINTERP.state().k === 0")
    for dom, vec in (("out", U[:, 0].reshape(32, 32)), ("in", Vt[0].reshape(8, 8))):
        got, scale = page.shown_values(1, dom)
        assert scale == pytest.approx(np.abs(vec).max(), rel=1e-5)
        assert (np.abs(got - vec) <= scale / 254 + 1e-6).all()
    assert page.page.locator("section.panel:nth-of-type(2) .svd h3").inner_text().startswith("SVD · 5")
    page.clean()


def rewrite_manifest(site: Path, **per_model):
    """Set manifest fields of the models of an exported site: ``per_model[field] = [value of model 0, ...]``
    (what the export writes from store attributes that today's test stores do not have)."""
    import json

    path = site / "data" / "manifest.js"
    text = path.read_text()
    m = json.loads(text[len("LINTERP.manifest("):].rstrip().removesuffix(";").removesuffix(")"))
    for key, values in per_model.items():
        for model, value in zip(m["models"], values):
            model[key] = value
    path.write_text("LINTERP.manifest(" + json.dumps(m) + ");\n")


def test_banner_and_approximations_in_words(browser, tmp_path):
    """A panel whose store has not passed verification carries a warning; the info panel says whether F is the
    Jacobian, lists the approximations in words and shows the geometry figures; a store that says nothing shows
    nothing about them."""
    a, _ = linear_upscaler_store(tmp_path / "a.zarr", mode="bicubic", c=1, h=8, w=8, tile=4)
    b, _ = linear_upscaler_store(tmp_path / "b.zarr", mode="bilinear", c=1, h=8, w=8, tile=4)
    c, _ = linear_upscaler_store(tmp_path / "c.zarr", mode="nearest", c=1, h=8, w=8, tile=4)
    export_site([a.path, b.path, c.path], tmp_path / "site", progress=False)
    page = Page(browser, tmp_path / "site")  # as exported: verified stores that say nothing about F
    assert page.page.locator(".panel-warning").count() == 0
    assert page.page.locator("dd.jacobian").count() == 0 and page.page.locator("dl.geometry").count() == 0
    approximations = ([{"op": "InstanceNorm2d", "where": f"model.{i}", "kind": "frozen-statistics"} for i in range(18)]
                      + [{"op": "tanh", "where": "model.27", "kind": "secant"}])
    geometry = {"adaptivity": 0.125, "flashlight_top1": 0.31, "flashlight_mrr": 0.42, "flashlight_chance": 0.0104,
                "samples": 256, "diagonal_share": 0.2, "reach90": 3.5}
    checks = [{"name": "reconstruction", "value": 0.1, "tolerance": 1e-4, "passed": False, "detail": ""},
              {"name": "rows", "value": 0.0, "tolerance": 1e-4, "passed": True, "detail": ""}]
    rewrite_manifest(tmp_path / "site", verification_status=["passed", "unverified", "failed"],
                     jacobian_exact=[True, False, None], approximations=[[], approximations, None],
                     geometry=[None, geometry, None])
    rewrite_manifest(tmp_path / "site", attrs=[a.attrs.for_viewer(), b.attrs.for_viewer(),
                                               dict(c.attrs.for_viewer(),
                                                    verification={"checks": checks, "jacobian_exact": True})])
    page = Page(browser, tmp_path / "site")
    panel = [page.page.locator(f"section.panel:nth-of-type({i})") for i in (1, 2, 3)]
    assert panel[0].locator(".panel-warning").count() == 0
    assert "Unverified" in panel[1].locator(".panel-warning").inner_text()
    assert panel[2].locator(".panel-warning").inner_text().startswith("Verification failed (reconstruction)")
    assert panel[0].locator("dd.jacobian").inner_text() == "F is the Jacobian at x₀"
    assert panel[1].locator("dd.jacobian").inner_text() == (
        "F is a linear interpreter, not the Jacobian: 18 instance norms with frozen statistics, 1 tanh secant")
    assert panel[2].locator("dd.jacobian").count() == 0
    geo = panel[1].locator("dl.geometry").inner_text()
    for text in ("adaptivity", "0.125", "flashlight top-1", "0.310", "flashlight chance", "0.0104", "reach 90 %", "3.50"):
        assert text in geo, (text, geo)
    assert panel[0].locator("dl.geometry").count() == 0
    assert [panel[i].locator("dd.verification").inner_text() for i in range(3)] == ["passed", "unverified", "failed"]
    verification_rows = panel[2].locator("dl").first.inner_text()  # booleans in words, not blank
    assert "jacobian exact\nyes" in verification_rows, verification_rows
    page.clean()


def test_fx0_panel_shows_what_the_stored_F_gives(browser, tmp_path):
    """With one shard of F altered after compute, the F·x0 panel shows the altered contraction, not y0 − r."""
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", mode="bicubic", c=1, h=8, w=8, tile=4)
    region = store.stored_shards()[2]
    store.F[region] = store.F[region] * -1.0
    dense[region] *= -1.0
    export_site([store.path], tmp_path / "site", progress=False)
    page = Page(browser, tmp_path / "site", "#m=col&y=1&x=1&show=fx0")
    got, scale = page.shown_values(0, "out")
    want = np.tensordot(dense, store.x0, axes=3)[0]
    assert (np.abs(got - want) <= scale / 254 + 1e-6).all()
    assert np.abs(got - (store.y0 - store.residual)[0]).max() > 20 * scale / 254
    page.clean()


def test_views_of_two_models_pan_and_zoom_together(browser, site):
    folder, (a, fa), (b, fb) = site
    page = Page(browser, folder, "#m=col&y=5&x=11&pin=1&z=20&cy=0.3&cx=0.6")
    views = [page.page.evaluate(f"LINTERP.shown({i}, 'out')") for i in (0, 1)]
    assert views[0]["zoom"] == views[1]["zoom"] == 20
    assert (views[0]["oy"], views[0]["ox"]) == (views[1]["oy"], views[1]["ox"]) and views[0]["vw"] < 64
    for panel, dense in ((0, fa), (1, fb)):
        rows, cols = page.window(panel, "out")
        got, scale = page.shown_values(panel, "out")
        assert (np.abs(got - dense[0, rows, cols, 0, 5, 11]) <= scale / 254 + 1e-6).all()
    page.clean()


def test_junk_addresses_and_channels_beyond_the_labels(browser, site):
    """A malformed escape in the address is ignored (the page still draws); channels past the last label are
    clamped before anything is drawn, so the caption, the selectors and the address say the same."""
    folder, (a, fa), _ = site
    page = Page(browser, folder, "#m=col&y=%zz&x=1")
    assert page.page.evaluate("LINTERP.state()")["x"] == 1
    page.clean()
    page = Page(browser, folder, "#m=col&y=3&x=4&s=9&t=9&pin=1")
    page.settle()
    caption = page.page.locator("section.panel:nth-of-type(1) figure.view.out figcaption").inner_text()
    chosen = [page.page.locator(f"#{name} option:checked").inner_text() for name in ("src-channel", "dst-channel")]
    assert chosen == ["Σ", "Σ"] and "Σ → Σ" in caption, (chosen, caption)
    page.page.wait_for_function("location.hash.includes('s=3&t=3')")
    got, scale = page.shown_values(0, "out")
    assert (np.abs(got - fa[:, :, :, :, 3, 4].sum(axis=(0, 3))) <= scale / 254 + 1e-5).all()
    page.clean()



@pytest.fixture(scope="module", params=[2, 1], ids=["x2", "x1"])
def mixed_site(request, tmp_path_factory):
    """One 8×8 image through bicubic ×s (s = 2 or 1: the first panel, the coarser output) and bicubic ×4."""
    s = request.param
    root = tmp_path_factory.mktemp(f"mixed{s}")
    coarse, fc = linear_upscaler_store(root / "coarse.zarr", mode="bicubic", c=1, h=8, w=8, scale=s, tile=4)
    fine, ff = linear_upscaler_store(root / "fine.zarr", mode="bicubic", c=1, h=8, w=8, scale=4, tile=4)
    export_site([coarse.path, fine.path], root / "site", progress=False)
    return root / "site", s, fc, ff


def test_mixed_scales_each_panel_selects_its_own_pixels(browser, mixed_site):
    """Beside a coarser panel, every output pixel of the ×4 panel can be selected (the coarser panel shows its pixel
    at that pixel's centre), hovering reads the pixel under the mouse, t goes to the middle pixel of each panel's
    own box, and the address opens the same pixel."""
    folder, s, fc, ff = mixed_site
    page = Page(browser, folder)

    def centre(v):  # the pixel of the coarser output at the centre of pixel v of the ×4 output: ⌊(v + ½)·s / 4⌋
        return (2 * v + 1) * s // 8

    def shows_rows(page, fine, coarse):  # each panel shows the row of its output pixel
        for panel, dense, (y, x) in ((1, ff, fine), (0, fc, coarse)):
            got, scale = page.shown_values(panel, "in")
            assert (np.abs(got - dense[0, y, x, 0]) <= scale / 254 + 1e-6).all(), (panel, y, x)
            caption = page.page.locator(f"section.panel:nth-of-type({panel + 1}) figure.view.in figcaption")
            assert caption.inner_text().startswith(f"row of output pixel ({y}, {x})"), caption.inner_text()

    for y, x in ((12, 20), (12, 21), (13, 20), (13, 21)):  # one 2×2 block of the ×4 output: each its own row
        page.hover(1, "out", y, x)
        page.settle()
        shows_rows(page, (y, x), (centre(y), centre(x)))
    # a pinned column: hovering the ×4 output reads the pixel under the mouse, the other panel its pixel there
    page.hover(0, "in", 3, 5, click=True)
    page.settle()
    page.hover(1, "out", 12, 21)
    page.page.wait_for_timeout(100)
    for panel, dense, (y, x) in ((1, ff, (12, 21)), (0, fc, (centre(12), centre(21)))):
        readout = page.page.locator(f"section.panel:nth-of-type({panel + 1}) .readout").inner_text()
        assert f"under cursor ({y}, {x}): " in readout, readout
        scale = np.abs(dense[0, :, :, 0, 3, 5]).max()
        assert abs(float(readout.split("): ")[-1]) - dense[0, y, x, 0, 3, 5]) <= scale / 254 + 1e-6
    page.page.keyboard.press("t")  # input pixel (3, 5): the middle pixel of its box in every output
    page.settle()
    shows_rows(page, (3 * 4 + 2, 5 * 4 + 2), (3 * s + s // 2, 5 * s + s // 2))
    page.page.keyboard.press("t")  # and back
    page.settle()
    for panel, dense in ((0, fc), (1, ff)):
        got, scale = page.shown_values(panel, "out")
        assert (np.abs(got - dense[0, :, :, 0, 3, 5]) <= scale / 254 + 1e-6).all()
    # the address keeps the pixel of the ×4 panel
    page.hover(1, "out", 13, 20, click=True)
    page.settle()
    page.page.wait_for_function("location.hash.includes('m=row&y=13&x=20&p=1&')")
    url = page.page.url
    page.clean()
    again = Page(browser, folder, "#" + url.split("#", 1)[1])
    assert again.page.evaluate("LINTERP.state()") == page.page.evaluate("LINTERP.state()")
    shows_rows(again, (13, 20), (centre(13), centre(20)))
    again.clean()


def lens_margins(page, panel: int) -> list[float]:
    """CSS px from the lens shown in a panel to the left, top, right and bottom edges of its view."""
    return page.page.evaluate(f"""(() => {{
        const all = document.querySelectorAll('section.panel:nth-of-type({panel + 1}) canvas.lens');
        const lens = [...all].find((c) => !c.hidden);
        const a = lens.getBoundingClientRect(), b = lens.parentElement.getBoundingClientRect();
        return [a.left - b.left, a.top - b.top, b.right - a.right, b.bottom - a.bottom]; }})()""")


def test_lens_stays_inside_its_view(browser, site, tmp_path):
    """At ×1 (a 64×64 output beside the side column) and on a 1-pixel-wide crop, the lens is inside its view."""
    folder = site[0]
    page = Page(browser, folder, "#m=col&y=5&x=11&pin=1&z=1")
    for key in ("", "t"):  # a column (the lens in the input view), then a row (in the output view)
        if key:
            page.page.keyboard.press(key)
            page.settle()
        for panel in (0, 1):
            assert min(lens_margins(page, panel)) >= 0, (key, panel, lens_margins(page, panel))
    page.clean()
    crop, _ = linear_upscaler_store(tmp_path / "crop.zarr", mode="bicubic", c=1, h=16, w=1, tile=4)
    export_site([crop.path], tmp_path / "site", progress=False)
    page = Page(browser, tmp_path / "site", "#m=col&y=8&x=0&pin=1")
    assert page.page.evaluate("LINTERP.shown(0, 'in').w") == 1
    for key in ("", "t"):
        if key:
            page.page.keyboard.press(key)
            page.settle()
        assert min(lens_margins(page, 0)) >= 0, (key, lens_margins(page, 0))
    page.clean()


def lens_overlaps_selection(page, panel: int) -> bool:
    """Whether the lens shown in a panel covers any part of the selected pixel in the view it is drawn on."""
    return page.page.evaluate(f"""(() => {{
        const panel = document.querySelector('section.panel:nth-of-type({panel + 1})');
        const lens = [...panel.querySelectorAll('canvas.lens')].find((c) => !c.hidden);
        const s = LINTERP.state(), half = LINTERP.shown({panel}, s.dom).zoom / 2;  // the lens is in view s.dom
        const c = LINTERP.clientPoint({panel}, s.dom, s.y, s.x), a = lens.getBoundingClientRect();
        return a.left < c.x + half && c.x - half < a.right && a.top < c.y + half && c.y - half < a.bottom; }})()""")


def test_lens_leaves_the_selected_pixel_visible_in_narrow_views(browser, tmp_path):
    """In a view narrower than the lens and its gap (a 1-pixel-wide crop, its ×4 output), the lens went over the
    selected pixel, centred on it; it goes above or below it instead, still inside its view."""
    crop, _ = linear_upscaler_store(tmp_path / "crop.zarr", mode="bicubic", c=1, h=16, w=1, tile=4)
    export_site([crop.path], tmp_path / "site", progress=False)
    for address in ("#m=col&y=8&x=0&pin=1", "#m=col&y=15&x=0&pin=1", "#m=row&y=30&x=2&pin=1",
                    "#m=row&y=0&x=0&pin=1"):
        page = Page(browser, tmp_path / "site", address)
        assert page.page.evaluate("LINTERP.state()")["dom"] == ("in" if "col" in address else "out")
        assert min(lens_margins(page, 0)) >= 0, (address, lens_margins(page, 0))
        assert not lens_overlaps_selection(page, 0), address
        page.clean()


def frame_sides(page, panel: int, dom: str, box) -> dict:
    """Which sides of the selection frame around the box (y, x, h, w) of a view are drawn: an opaque overlay
    pixel within 3 CSS px of that edge of the box, on its middle row or column."""
    info = page.page.evaluate(f"LINTERP.shown({panel}, '{dom}')")
    z, (y, x, h, w) = info["zoom"], box
    top, left = (y - info["oy"]) * z, (x - info["ox"]) * z
    height, alpha = page.page.evaluate(f"""(() => {{
        const c = document.querySelector('section.panel:nth-of-type({panel + 1}) figure.view.{dom} canvas.overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return [c.height, Array.from(d.filter((v, i) => i % 4 === 3))]; }})()""")
    alpha = np.array(alpha, np.uint8).reshape(height, -1)
    row, col = alpha[top + h * z // 2], alpha[:, left + w * z // 2]

    def near(line, edge):
        return line[max(0, edge - 3):edge + 3].any()

    return {"left": near(row, left), "right": near(row, left + w * z),
            "top": near(col, top), "bottom": near(col, top + h * z)}


def test_selection_box_whole_at_image_borders(browser, site):
    """A pixel at the border of the image, and its box in the other domain, show all four sides of their frame."""
    folder = site[0]
    for address, boxes in (("#m=col&y=0&x=0&pin=1", {"in": (0, 0, 1, 1), "out": (0, 0, 4, 4)}),
                           ("#m=row&y=63&x=63&pin=1", {"out": (63, 63, 1, 1), "in": (15, 15, 1, 1)}),
                           ("#m=col&y=15&x=0&pin=1", {"in": (15, 0, 1, 1), "out": (60, 0, 4, 4)})):
        page = Page(browser, folder, address)
        for panel in (0, 1):
            for dom, box in boxes.items():
                sides = frame_sides(page, panel, dom, box)
                assert all(sides.values()), (address, panel, dom, sides)
        page.clean()


def test_lens_label_gives_the_size_of_the_filter(browser, site):
    """The lens names the size of the non-zero box of the row / column it magnifies (not the box with its margin)."""
    folder = site[0]
    page = Page(browser, folder, "#m=col&y=5&x=11&pin=1")
    for key, dom, word in (("", "out", "column"), ("t", "in", "row")):
        if key:
            page.page.keyboard.press(key)
            page.settle()
        got, _ = page.shown_values(0, dom)
        rows, cols = np.nonzero(got)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        label = page.page.locator("section.panel:nth-of-type(1) canvas.lens:not([hidden])").get_attribute("aria-label")
        where = "output" if dom == "out" else "input"
        assert label.startswith(word) and label.endswith(f" · {where} {h}×{w} px"), label
    page.clean()


def test_a_classifier_site_opens_on_the_row_of_its_top_class(browser, tmp_path):
    """A classifier's output is one pixel of class scores, so its column is one value per class: the site opens in
    rows mode on the row of the top-1 class (argmax of y0, `top1` in the manifest) over the input, as stored."""
    import torch

    from pipeline.api import compute_store

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5))
    image = np.random.default_rng(1).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    store = compute_store(net.eval(), image, tmp_path / "clf.zarr", name="clf", device="cpu", progress=False)
    top = int(np.argmax(store.y0[:, 0, 0]))
    assert top != 0  # the default class of an image site would be 0: the test tells the two apart
    export_site([store.path], tmp_path / "site", progress=False)
    page = Page(browser, tmp_path / "site")
    page.settle()
    state = page.page.evaluate("LINTERP.state()")
    assert (state["dom"], state["y"], state["x"], state["src"]) == ("out", 0, 0, top)
    got, scale = page.shown_values(0, "in")
    want = store.F[top, 0, 0, 0]  # the row of class `top`, input channel R
    assert np.abs(want).max() > 0 and (np.abs(got - want) <= scale / 254 + 1e-6).all()
    page.clean()
