"""`linterp bundle`: archives of the paper's bundles on tiny crops, their README.txt, the stand-in note, the stores
they carry (F·x0 + r = f(x0) after unzipping), resuming, the offline failure and the unzipped site in a browser.

The project's trained stand-ins are replaced by seeded random weight files written into a temporary weights folder,
so that these tests do not depend on training runs; the bundle code treats them exactly as the trained files.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.images import default_image
from pipeline.models import build, registry
from pipeline.models.weights import file_sha256
from pipeline.store import open_store
from test_viewer_browser import Page, browser, needs_chromium  # noqa: F401  (browser is a fixture)

CROP = "44,36,8,8"  # 8×8 pixels of the default image (SR tests)
I2I_CROP = "40,32,16,16"  # 16×16: the ResNet generator downsamples by 4, its instance norms need some area


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A weights folder holding seeded random ``edsr-small-x4.pt`` and ``i2i-label.pt`` state dicts."""
    folder = tmp_path_factory.mktemp("weights")
    for name in ("edsr-small-x4", "i2i-label"):
        torch.save(build(name, "random").state_dict(), folder / f"{name}.pt")
    return folder


@pytest.fixture
def project_weights(stand_ins, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", stand_ins)
    for name in ("edsr-small-x4", "i2i-label"):
        monkeypatch.setitem(registry.TRAINED_SHA256, name, file_sha256(stand_ins / f"{name}.pt"))
    return stand_ins


def run(args):
    """`linterp bundle ARGS --quiet` in this process (click's runner; stdout and stderr both in ``.output``)."""
    return CliRunner().invoke(main, ["bundle", *args, "--quiet"])


@pytest.fixture(scope="module")
def photo2label(tmp_path_factory, stand_ins):
    """DEFAULTS=1 CycleGAN-Photo2Label on a 16×16 crop, with the store; returns (zip, work folder, unzipped root)."""
    root = tmp_path_factory.mktemp("bundle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "WEIGHTS_DIR", stand_ins)
        mp.setitem(registry.TRAINED_SHA256, "i2i-label", file_sha256(stand_ins / "i2i-label.pt"))
        result = run(["CycleGAN-Photo2Label", "--defaults", "--crop", I2I_CROP, "--store",
                      "--work", str(root / "work"), "--out", str(root / "dist" / "CycleGAN-Photo2Label.zip")])
    assert result.exit_code == 0, result.output
    archive = root / "dist" / "CycleGAN-Photo2Label.zip"
    assert result.stdout.strip().splitlines()[-1] == str(archive)
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None  # every entry's CRC-32 checks out, whoever compressed it
        zf.extractall(root / "unzipped")
    return archive, root / "work", root / "unzipped" / "CycleGAN-Photo2Label"


def test_defaults_archive_holds_site_readme_and_store(photo2label, stand_ins):
    archive, work, site = photo2label
    names = zipfile.ZipFile(archive).namelist()
    assert all(n.startswith("CycleGAN-Photo2Label/") for n in names)
    assert not any("/.done/" in n for n in names)  # export's resume markers stay out of the archive
    for part in ("index.html", "viewer.js", "viewer.css", "data/manifest.js", "README.txt"):
        assert (site / part).is_file(), part
    tiles = list((site / "data" / "i2i-label").glob("col_*.js")) + list((site / "data" / "i2i-label").glob("row_*.js"))
    assert tiles
    # the site says that a stand-in replaces the official model (banner and manifest)
    index = (site / "index.html").read_text()
    assert "i2i-label (trained by linterp) stands in for the official cyclegan-facades_photo2label" in index
    assert "stands in for the official cyclegan-facades_photo2label" in (site / "data" / "manifest.js").read_text()
    # README.txt: command, versions, sha256 of the weights file and of the image's pixels
    readme = (site / "README.txt").read_text()
    command = readme.split("Command:\n", 1)[1].splitlines()[0].split()
    assert command[:3] == ["linterp", "bundle", "CycleGAN-Photo2Label"] and "--defaults" in command
    assert command[command.index("--crop") + 1] == I2I_CROP and "--store" in command
    assert file_sha256(stand_ins / "i2i-label.pt") in readme
    assert hashlib.sha256(default_image()[1].tobytes()).hexdigest() in readme
    assert f"torch {torch.__version__}" in readme and "zarr " in readme
    assert "4.0 GB" in readme  # the paper's archive, for comparison


def test_archived_store_reconstructs_the_output(photo2label):
    """The store inside the zip is a complete, valid store: F·x0 + r = f(x0), and it carries the SVD."""
    _, work, site = photo2label
    store = open_store(site / "store" / "i2i-label.zarr", require_complete=True)
    F = store.F[...]
    n_out, n_in = int(np.prod(store.out_shape)), int(np.prod(store.in_shape))
    fx0 = F.reshape(n_out, n_in) @ store.x0.reshape(n_in)
    recon = fx0 + store.residual.reshape(n_out)
    # relative to the largest term, as `linterp verify` judges it: with instance norms F·x0 and r are far larger
    # than y0 and cancel, so float32 rounding (other convolution kernels, summation order) scales with them
    terms = max(np.abs(store.y0).max(), np.abs(fx0).max(), np.abs(store.residual).max())
    assert np.abs(recon - store.y0.reshape(n_out)).max() <= 1e-4 * terms
    S, U, V = store.svd()
    assert S.shape == (8,)
    assert np.allclose(F.reshape(n_out, n_in) @ V[0].reshape(n_in), S[0] * U[0].reshape(n_out), atol=1e-3 * S[0])
    assert np.array_equal(F, open_store(work / "stores" / "i2i-label.zarr").F[...])


def test_rerun_reuses_the_work(photo2label, project_weights):
    archive, work, _ = photo2label
    before = archive.read_bytes()
    result = run(["CycleGAN-Photo2Label", "--defaults", "--crop", I2I_CROP, "--store", "--work", str(work),
                  "--out", str(archive)])
    assert result.exit_code == 0, result.output
    assert "reusing the complete store" in result.output and "reusing its SVD" in result.output
    assert zipfile.ZipFile(archive).namelist() == zipfile.ZipFile(io.BytesIO(before)).namelist()


def test_official_weights_offline_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # no network: a closed local port
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    for name, url in (("EDSR4x", "https://cv.snu.ac.kr/research/EDSR/models/edsr_baseline_x4-6b446fab.pt"),
                      ("CycleGAN-VanGogh",
                       "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/style_vangogh.pth")):
        result = run([name, "--crop", CROP, "--out", str(tmp_path / f"{name}.zip")])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, lines
        assert url in lines[0] and "WEIGHTS=PATH" in lines[0] and "DEFAULTS=1" in lines[0]
        assert not (tmp_path / f"{name}.zip").exists() and not list((tmp_path / "cache").glob("*"))


@pytest.mark.parametrize("args, message", [
    (["Nope", "--out", "x.zip"], "unknown bundle 'Nope'; known: demo, Bicubic4x"),
    (["EDSR4x", "--defaults", "--weights", "pyproject.toml", "--out", "x.zip"], "not both"),
    (["demo", "--weights", "pyproject.toml", "--out", "x.zip"], "--weights needs one"),
    (["Bicubic4x", "--crop", "1,2", "--out", "x.zip"], "is not X,Y,W,H"),
    (["Bicubic4x", "--image", "missing.png", "--out", "x.zip"], "IMAGE=missing.png: no such file"),
    (["Bicubic4x", "--out", "site", "--work", "w"], "--work only applies to .zip outputs"),
    (["Bicubic4x", "--out", "mine.zip"], "mine.zip exists and is not a Bicubic4x archive of linterp"),
    (["Bicubic4x", "--out", "notes.txt"], "notes.txt exists and is not a folder"),
    (["Bicubic4x", "--out", "folder.zip"], "folder.zip is a folder, not an archive"),
    # the fourth model cannot take a 23×17 crop: refused before the other three are computed
    (["demo", "--crop", "0,0,23,17", "--out", "site"], "i2i-label needs a height and width that are multiples of 4"),
])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the user's files, which a refused build must leave as they are
    with zipfile.ZipFile("mine.zip", "w") as zf:
        zf.writestr("holiday/photo.txt", "mine")
    Path("notes.txt").write_text("mine")
    Path("folder.zip").mkdir()
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir())
    result = run(args)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and message in result.output, result.output
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir()) == before


def test_weights_file_with_wrong_keys_names_them(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    result = run(["EDSR4x", "--crop", CROP, "--weights", str(wrong), "--out", str(tmp_path / "x.zip"),
                  "--work", str(tmp_path / "work")])
    assert result.exit_code == 1 and "conv.weight" in result.output
    assert len(result.output.strip().splitlines()) == 1


@needs_chromium
def test_edsr_site_folder_in_the_browser(browser, tmp_path, project_weights):  # noqa: F811
    """DEFAULTS=1 EDSR4x as a folder: the unzipped-style site shows the stored columns and rows and the note."""
    result = run(["EDSR4x", "--defaults", "--crop", CROP, "--out", str(tmp_path / "edsr")])
    assert result.exit_code == 0, result.output
    index = tmp_path / "edsr" / "site" / "index.html"
    assert result.stdout.strip().splitlines()[-1] == str(index)
    store = open_store(tmp_path / "edsr" / "stores" / "edsr-small-x4.zarr")
    page = Page(browser, index.parent)
    assert "stands in for the official edsr-baseline-x4" in page.page.locator(".bundle-note").inner_text()
    scale = _assert_shown(page, "in", 3, 5, store.column(0, 3, 5)[0])
    assert scale == pytest.approx(np.abs(store.column(0, 3, 5)[0]).max(), rel=1e-6)
    _assert_shown(page, "out", 13, 21, store.row(0, 13, 21)[0])
    page.clean()


def _assert_shown(page, side: str, y: int, x: int, want) -> float:
    """Hover pixel (y, x) of `side` in the first panel; the filter shown on the other side equals `want` within
    the 8-bit rendering error. Returns the colour scale."""
    page.wait_render(page.hover(0, side, y, x))
    got, scale = page.shown_values(0, "out" if side == "in" else "in")
    assert scale > 0 and (np.abs(got - want) <= scale / 254 + 1e-6).all()
    return scale


@needs_chromium
def test_unzipped_archive_in_the_browser(browser, photo2label):  # noqa: F811
    _, _, site = photo2label
    store = open_store(site / "store" / "i2i-label.zarr")
    page = Page(browser, site)
    _assert_shown(page, "in", 2, 6, store.column(0, 2, 6)[0])
    page.clean()


def test_weights_file_replaces_the_official_download(tmp_path, monkeypatch):
    """WEIGHTS=PATH: the official model from a local file, offline; no stand-in note, the file's hash in README.txt."""
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "edsr_baseline_x4-local.pt"
    torch.save(build("edsr-baseline-x4", "random").state_dict(), weights)
    result = run(["EDSR4x", "--crop", "46,38,4,4", "--weights", str(weights), "--work", str(tmp_path / "work"),
                  "--out", str(tmp_path / "EDSR4x.zip")])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "EDSR4x.zip") as zf:
        readme = zf.read("EDSR4x/README.txt").decode()
        index = zf.read("EDSR4x/index.html").decode()
    assert f"edsr-baseline-x4: weights {weights.name}  sha256 {file_sha256(weights)}" in readme
    assert "stands in" not in readme and "stands in" not in index
    assert "without naming the variant" in index  # the bundle's own note stays
    store = open_store(tmp_path / "work" / "stores" / "edsr-baseline-x4.zarr")
    assert store.attrs.verification["reconstruction_rel"] < 1e-5


def test_compact_bundle_keeps_its_own_store_and_says_so(tmp_path, stand_ins, monkeypatch):
    """DEFAULTS=1 EDSR4x with DTYPE=float16 SUPPORT_TOL=1e-3: a compact store (apart from the exact one of the same
    inputs), its error figures in README.txt, and a site built from it."""
    monkeypatch.setattr(registry, "WEIGHTS_DIR", stand_ins)
    monkeypatch.setitem(registry.TRAINED_SHA256, "edsr-small-x4", file_sha256(stand_ins / "edsr-small-x4.pt"))
    monkeypatch.chdir(tmp_path)
    args = ["EDSR4x", "--defaults", "--crop", CROP, "--dtype", "float16", "--support-tol", "1e-3"]
    result = run(args + ["--out", "dist/EDSR4x.zip"])
    assert result.exit_code == 0, result.output
    work = next((tmp_path / "out" / "bundles").glob("EDSR4x-*"))
    store = open_store(work / "stores" / "edsr-small-x4.zarr", require_complete=True)
    assert store.compact and store.attrs.dtype == "float16" and store.attrs.support_tol == 1e-3
    with zipfile.ZipFile(tmp_path / "dist" / "EDSR4x.zip") as zf:
        readme = zf.read("EDSR4x/README.txt").decode()
    assert "compact store (float16, support tol 0.001): every entry within" in readme
    assert "--dtype float16 --support-tol 0.001" in readme
    exact = run(["EDSR4x", "--defaults", "--crop", CROP, "--out", "dist/exact.zip"])
    assert exact.exit_code == 0, exact.output
    assert len(list((tmp_path / "out" / "bundles").glob("EDSR4x-*"))) == 2  # the exact store has its own folder


def test_folder_bundle_of_other_inputs_keeps_the_old_store_aside(tmp_path):
    """`make demo` after the inputs changed (here the crop; in practice new default weights): the store of the
    old inputs is renamed, not deleted and not an error, and the new site shows the new store."""
    out = tmp_path / "site-folder"
    first = run(["Bicubic4x", "--crop", CROP, "--out", str(out)])
    assert first.exit_code == 0, first.output
    old = open_store(out / "stores" / "bicubic-x4.zarr").attrs.identity
    second = run(["Bicubic4x", "--crop", "40,40,8,8", "--out", str(out)])
    assert second.exit_code == 0, second.output
    aside = out / "stores" / "bicubic-x4.zarr.replaced-1"
    assert "kept as" in second.output and str(aside) in second.output
    assert open_store(aside).attrs.identity == old  # nothing lost
    new = open_store(out / "stores" / "bicubic-x4.zarr", require_complete=True)
    assert new.attrs.identity["crop"] != old["crop"]
    third = run(["Bicubic4x", "--crop", "40,40,8,8", "--out", str(out)])  # same inputs: reused, nothing moved
    assert third.exit_code == 0 and not (out / "stores" / "bicubic-x4.zarr.replaced-2").exists()


def test_zip_entries_compressed_in_threads_read_back_exactly(tmp_path):
    """Sheets (scripts carrying PNG data) are compressed outside zipfile, in threads: every entry reads back as
    the file it came from, with its CRC checked, next to entries zipfile wrote itself."""
    import base64

    from pipeline.bundle import write_zip

    rng = np.random.default_rng(0)
    site = tmp_path / "site"
    (site / "data" / "m").mkdir(parents=True)
    (site / "index.html").write_text("<h1>x</h1>" * 100)
    (site / "data" / "manifest.js").write_text("LINTERP.manifest({});")
    (site / "data" / "m" / "tile.png").write_bytes(rng.bytes(3000))
    for i in range(12):
        payload = base64.b64encode(rng.bytes(int(rng.integers(0, 50_000)))).decode()
        (site / "data" / "m" / f"col_0_{i}.js").write_text(f'LINTERP.sheet("m/col_0_{i}",{{"png":"{payload}"}});')
    (site / "data" / "m" / ".done").mkdir()
    (site / "data" / "m" / ".done" / "marker").write_text("{}")
    write_zip(tmp_path / "out.zip", "B", site, [])
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert zf.testzip() is None
        files = sorted(p for p in site.rglob("*") if p.is_file() and ".done" not in p.parts)
        assert sorted(zf.namelist()) == sorted(f"B/{p.relative_to(site).as_posix()}" for p in files)
        for path in files:
            info = zf.getinfo(f"B/{path.relative_to(site).as_posix()}")
            assert zf.read(info) == path.read_bytes()
            assert info.compress_type == (zipfile.ZIP_STORED if path.suffix == ".png" else zipfile.ZIP_DEFLATED)
            if path.name.startswith("col_") and info.file_size > 1000:
                assert info.compress_size < 0.8 * info.file_size  # base64's 4/3 given back
