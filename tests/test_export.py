"""Site export: colour map, quantisation, sprite sheets that hold every row and column, images, SVD, resume,
errors and schedulers (the video: test_video.py).

The stores are real Zarr stores written through ``pipeline.store.create_store``; their F is the exact matrix of
a linear upscaler (torch's bicubic / bilinear interpolation), built column by column from unit impulses.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from click.testing import CliRunner

from pipeline.export import render
from pipeline.export.site import ExportError, channel_labels, export_site, with_sum
from pipeline.store import FileRef, StoreError, SvdAttrs, create_store, layout, open_store


# ---- stores ----------------------------------------------------------------------------------------------
def linear_upscaler_store(path, *, mode="bicubic", c=3, h=16, w=16, scale=4, tile=8, seed=0, image="noise"):
    """A complete store of ``F.interpolate(mode)`` ×scale at a random image; returns (store, dense F)."""
    rng = np.random.default_rng(seed)
    x0 = rng.random((c, h, w), dtype=np.float32)
    kwargs = {} if mode == "nearest" else {"align_corners": False}

    def f(x):
        return TF.interpolate(x, scale_factor=scale, mode=mode, **kwargs)

    y0 = f(torch.from_numpy(x0)[None])[0].numpy()
    cols = f(torch.eye(c * h * w).reshape(-1, c, h, w)).numpy()  # (C_in·H·W, C_out, H_out, W_out)
    dense = np.ascontiguousarray(np.moveaxis(cols.reshape(c, h, w, c, h * scale, w * scale), (0, 1, 2), (3, 4, 5)))
    shards, chunks, tasks = layout((c, h, w), (c, h * scale, w * scale), tile)
    name = f"{mode}-x{scale}"
    store = create_store(path, identity={"model": name, "image": image, "seed": seed},
                         attrs={"model": name, "image": FileRef(image, f"{seed:064x}"), "crop": None,
                                "scale": scale, "weights": FileRef(None, None),
                                "verification": {"status": "passed", "checks": [], "max_abs_error": 0.0}},
                         x0=x0, y0=y0, residual=np.zeros_like(y0), shards=shards, chunks=chunks, tasks=tasks)
    store.F[...] = dense
    store.update_attrs(complete=True)
    return store, dense


@pytest.fixture(scope="module")
def bicubic16(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "bicubic16.zarr"
    return linear_upscaler_store(path)


@pytest.fixture(scope="module")
def site16(bicubic16, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    summary = export_site([bicubic16[0].path], out, progress=False)
    return out, summary


def read_sheets(folder: Path) -> dict:
    """name -> (meta, sheet image) for every sheet script of a model folder."""
    sheets = {}
    for f in sorted(folder.glob("*.js")):
        name, meta, img = render.parse_sheet_script(f.read_text())
        sheets[name.split("/", 1)[1]] = (meta, img)
    return sheets


def decoded_filters(sheets: dict, kind: str, shape_src, shape_dst) -> dict:
    """{(s, y, x): (planes (nt, H, W) float32, scales (nt,), box)} decoded from the sheets of one kind."""
    out = {}
    for name, (meta, img) in sheets.items():
        if not name.startswith(kind + "_"):
            continue
        s = int(name.split("_")[1])
        (oy, ox), (bh, bw), nt = meta["origin"], meta["size"], meta["nt"]
        for k in range(bh * bw):
            top, left, h, w = meta["boxes"][4 * k:4 * k + 4]
            scales = np.array(meta["scales"][nt * k:nt * k + nt], np.float32)
            q = render.unpack_entry(img, meta["cell"], nt, bw, k, h, w)
            full = np.zeros((nt,) + tuple(shape_dst[1:]), np.float32)
            full[:, top:top + h, left:left + w] = render.dequantise(q, scales)
            key = (s, oy + k // bw, ox + k % bw)
            assert key not in out, f"{kind} {key} appears twice"
            out[key] = (full, scales, (top, left, h, w))
    return out


# ---- colour map and quantisation -----------------------------------------------------------------------
def test_colour_map_is_diverging_uniform_and_invertible():
    from skimage.color import rgb2lab

    lut = render.diverging_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert len({tuple(c) for c in lut[1:]}) == 255  # every q has its own colour: decodable
    lab = rgb2lab(lut[None] / 255.0)[0]
    centre = lab[render.ZERO]
    assert centre[0] == lab[:, 0].max() and abs(centre[1]) < 1 and abs(centre[2]) < 1  # zero = light neutral
    assert lab[1, 2] < -30 and lab[255, 1] > 30  # negative blue, positive red
    for side in (-1, 1):
        k = np.arange(1, 128)
        dist = np.linalg.norm(lab[render.ZERO + side * k] - centre, axis=1)
        # uniform: the colour distance from zero grows linearly with |value| (8-bit rounding aside)
        np.testing.assert_allclose(dist, k / 127 * dist[-1], atol=1.2)
    ends = [np.linalg.norm(lab[i] - centre) for i in (1, 255)]
    assert abs(ends[0] - ends[1]) < 1.5  # symmetric


def test_quantise_round_trip_within_rendering_error():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4, 3, 9, 7)).astype(np.float32)
    v[0, 0] = 0
    scales = render.plane_scales(v)
    q = render.quantise(v, scales)
    assert q.min() >= 1 and (q[0, 0] == render.ZERO).all()
    err = np.abs(render.dequantise(q, scales) - v)
    assert (err <= scales[..., None, None] / 254 + 1e-6).all()
    assert ((q.reshape(12, -1).max(1)[1:] == 255) | (q.reshape(12, -1).min(1)[1:] == 1)).all()  # full range
    # colours drawn with the map decode back to the same q
    rgb = render.colourise(v[1, 2], scales[1, 2])
    np.testing.assert_array_equal(render.decode_colours(rgb), q[1, 2])


def test_pack_and_unpack_sheet():
    rng = np.random.default_rng(2)
    entries = [rng.integers(1, 256, size=(2, h, w), dtype=np.uint8) for h, w in [(3, 5), (4, 1), (0, 0), (2, 2)]]
    sheet, cell = render.pack_sheet(entries, 3)
    assert sheet.shape == (2 * 4, 3 * 2 * 5) and cell == (4, 5)
    for i, e in enumerate(entries):
        np.testing.assert_array_equal(render.unpack_entry(sheet, cell, 2, 3, i, *e.shape[1:]), e)
    for strategy in (render.QUANTISED_STRATEGY, zlib.Z_DEFAULT_STRATEGY):
        back = render.png_decode(render.png_bytes(sheet, strategy))
        np.testing.assert_array_equal(back, sheet)  # lossless


# ---- the site --------------------------------------------------------------------------------------------
def test_every_row_and_column_of_bicubic16_is_in_the_tiles(bicubic16, site16):
    store, dense = bicubic16
    out, summary = site16
    sheets = read_sheets(out / "data" / "bicubic-x4")
    c_out, h_out, w_out, c_in, h_in, w_in = dense.shape
    for kind, src_shape, dst_shape, mats in (
            ("col", (c_in, h_in, w_in), (c_out, h_out, w_out), np.moveaxis(dense, (3, 4, 5), (0, 1, 2))),
            ("row", (c_out, h_out, w_out), (c_in, h_in, w_in), dense)):
        got = decoded_filters(sheets, kind, src_shape, dst_shape)
        n_src = len(channel_labels(src_shape[0]))
        assert len(got) == n_src * src_shape[1] * src_shape[2]  # every pixel, every source channel and Σ
        # every source channel and Σ × every destination channel and Σ: (ns, H_src, W_src, nt, H, W)
        full = np.moveaxis(with_sum(np.moveaxis(with_sum(mats), 3, 0)), 0, 3)
        for (s, y, x), (planes, scales, box) in got.items():
            want = full[s, y, x]  # (nt, H, W)
            assert planes.shape == want.shape
            assert (np.abs(planes - want) <= scales[:, None, None] / 254 + 1e-6).all(), (kind, s, y, x)
            np.testing.assert_allclose(scales, np.abs(want).max(axis=(1, 2)), rtol=1e-5)
            # cropped to the non-zero box of the filter at 8 bits: the box's edges hold non-zero values, and
            # outside it every value is below the rendering error (checked above over the whole domain)
            nz = np.any(mats[:, y, x] != 0, axis=(0, 1))
            top, left, h, w = render.nonzero_box(nz)
            assert box[2] > 0 and top <= box[0] and left <= box[1]
            assert box[0] + box[2] <= top + h and box[1] + box[3] <= left + w
            inside = planes[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]] != 0
            assert inside[:, 0].any() and inside[:, -1].any() and inside[:, :, 0].any() and inside[:, :, -1].any()
    assert summary["filters"] == dense.shape[0] * h_out * w_out + c_in * h_in * w_in
    assert summary["files"] < 30  # sprite sheets keep the file count small
    manifest = (out / "data" / "manifest.js").read_text()
    assert manifest.startswith("LINTERP.manifest(")
    m = json.loads(manifest[len("LINTERP.manifest("):].rstrip().removesuffix(";").removesuffix(")"))
    panel = m["models"][0]
    assert panel["attrs"]["model"] == "bicubic-x4"
    # the store's attributes as the viewer reads them (file names and digests), and the verification fields
    assert panel["attrs"]["image"] == "noise" and panel["attrs"]["image_sha256"] == f"{0:064x}"
    assert panel["attrs"]["weights"] is None and panel["attrs"]["format_version"] == 2
    assert panel["verification_status"] == "passed" and panel["jacobian_exact"] is None
    assert panel["approximations"] == [] and panel["geometry"] is None
    assert np.array_equal(np.array(m["lut"], np.uint8), render.diverging_lut())
    for name in ("index.html", "viewer.js", "viewer.css"):
        assert (out / name).is_file()


def test_odd_image_sides_get_sheets_of_many_pixels(tmp_path):
    """A 23×17 image below the compute tile: F's chunks are 17×23 (odd sides, no divisor but 1), which gave one
    sheet per pixel (a 23×17 edsr-small-x4 store: 26 599 files); its blocks span chunks instead, and every row
    and column is still in the sheets exactly once."""
    store, dense = linear_upscaler_store(tmp_path / "odd.zarr", c=1, h=17, w=23, tile=32)
    assert store.F.chunks[4:] == (17, 23)
    summary = export_site([store.path], tmp_path / "site", progress=False)
    assert summary["files"] < 30
    sheets = read_sheets(tmp_path / "site" / "data" / "bicubic-x4")
    for kind, src, dst, mats in (("col", (1, 17, 23), (1, 68, 92), np.moveaxis(dense, (3, 4, 5), (0, 1, 2))),
                                 ("row", (1, 68, 92), (1, 17, 23), dense)):
        got = decoded_filters(sheets, kind, src, dst)
        assert sorted(got) == [(0, y, x) for y in range(src[1]) for x in range(src[2])]
        for (_, y, x), (planes, scales, _) in got.items():
            assert (np.abs(planes - mats[0, y, x]) <= scales[:, None, None] / 254 + 1e-6).all(), (kind, y, x)


def test_export_into_an_earlier_site_removes_the_files_it_no_longer_uses(tmp_path):
    """A site exported again with another sheet layout (here smaller sheets and tiles, as another linterp
    version or another store of the model may give) kept every sheet and tile of the first export beside the new
    ones: the odd-sized site above went from 26 599 files to 26 599 + 55, and a bundle's archive took them all."""
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=16, w=16)
    folder = tmp_path / "site" / "data" / "bicubic-x4"
    export_site([store.path], tmp_path / "site", progress=False, sheet_pixels=1 << 12, tile=16)
    before = {p.name for p in folder.iterdir() if p.is_file()}
    summary = export_site([store.path], tmp_path / "site", progress=False)
    export_site([store.path], tmp_path / "fresh", progress=False)
    after = {p.name for p in folder.iterdir() if p.is_file()}
    assert after == {p.name for p in (tmp_path / "fresh" / "data" / "bicubic-x4").iterdir() if p.is_file()}
    assert len(before - after) > 10 and summary["files"] == len(after) + 4  # index, viewer.js / .css, manifest
    got = decoded_filters(read_sheets(folder), "col", (1, 16, 16), (1, 64, 64))
    assert sorted(got) == [(0, y, x) for y in range(16) for x in range(16)]
    (folder / "notes.txt").write_text("mine")  # files export does not write are left alone
    export_site([store.path], tmp_path / "site", progress=False, sheet_pixels=1 << 12)
    assert (folder / "notes.txt").read_text() == "mine"


def test_site_references_no_remote_resources(site16):
    out, _ = site16
    for name in ("index.html", "viewer.js", "viewer.css"):
        text = (out / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert "fetch(" not in text and "XMLHttpRequest" not in text


def decoded_image(sheets: dict, name: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """(planes (nt, H, W) float32, scales (nt,)) of the whole image ``name`` assembled from its tiles."""
    c, h, w = shape
    nt = len(channel_labels(c))
    planes, covered, scales = np.zeros((nt, h, w), np.float32), np.zeros((h, w), int), None
    for key, (meta, img) in sheets.items():
        if not key.startswith(f"img_{name}_"):
            continue
        (ty, tx), (th, tw) = meta["origin"], meta["size"]
        assert meta["nt"] == nt and img.shape == (th, nt * tw)
        scales = np.array(meta["scales"], np.float32)
        q = np.moveaxis(img.reshape(th, nt, tw), 1, 0)
        planes[:, ty:ty + th, tx:tx + tw] = render.dequantise(q, scales)
        covered[ty:ty + th, tx:tx + tw] += 1
    assert (covered == 1).all(), f"{name}: tiles do not cover the image once"
    return planes, scales


def read_manifest(site: Path) -> dict:
    text = (site / "data" / "manifest.js").read_text()
    return json.loads(text[len("LINTERP.manifest("):].rstrip().removesuffix(";").removesuffix(")"))


def test_images_residual_and_svd(tmp_path):
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", mode="bilinear", c=3, h=8, w=8, tile=4)
    # a real truncated SVD of F, written through the store API
    mat = dense.reshape(np.prod(dense.shape[:3]), -1).astype(np.float64)
    U, S, Vt = np.linalg.svd(mat, full_matrices=False)
    k = 6
    store = open_store(store.path, mode="r+")
    store.write_svd(S[:k], U[:, :k].T, Vt[:k], residuals=np.zeros(k), attrs={"method": "numpy"})
    summary = export_site([store.path], tmp_path / "site", progress=False, tile=12)  # 3×3 tiles of the output
    sheets = read_sheets(tmp_path / "site" / "data" / "bilinear-x4")
    manifest = read_manifest(tmp_path / "site")["models"][0]
    images = {"x0": store.x0, "y0": store.y0, "residual": store.residual,
              "fx0": np.tensordot(dense, store.x0, axes=3)}
    images |= {f"u{i}": U[:, i].reshape(dense.shape[:3]) for i in range(k)}
    images |= {f"v{i}": Vt[i].reshape(dense.shape[3:]) for i in range(k)}
    for name, image in images.items():
        want = with_sum(image)
        got, scales = decoded_image(sheets, name, image.shape)
        np.testing.assert_allclose(scales, np.abs(want).max(axis=(1, 2)), rtol=1e-5)
        assert manifest["images"][name]["scales"] == [float(f"{v:.9g}") for v in scales]
        assert (np.abs(got - want) <= scales[:, None, None] / 254 + 1e-6).all(), name
    for name, image in (("x0", store.x0), ("y0", store.y0)):
        meta = manifest["images"]["nat_" + name]
        tiles_ = {key: v for key, v in sheets.items() if key.startswith(f"nat_{name}_")}
        assert len(tiles_) == -(-image.shape[1] // 12) * -(-image.shape[2] // 12)
        for (m, img) in tiles_.values():
            (ty, tx), (th, tw) = m["origin"], m["size"]
            np.testing.assert_allclose(meta["lo"] + img.astype(np.float32) / 255 * (meta["hi"] - meta["lo"]),
                                       np.moveaxis(image[:, ty:ty + th, tx:tx + tw], 0, -1),
                                       atol=(meta["hi"] - meta["lo"]) / 510 + 1e-6)
    assert sheets["thumb"][1].shape == (8, 8, 3)
    assert manifest["svd"]["k"] == 6 and manifest["tile"] == 12 and summary["models"][0]["model"] == "bilinear-x4"


def test_fx0_is_contracted_from_the_stored_F(tmp_path):
    """The F·x0 panel shows what the stored F gives, not y0 − r: with one shard of F altered after compute,
    the panel follows F and visibly departs from y0 − r."""
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", mode="bicubic", c=3, h=8, w=8, tile=4)
    region = store.stored_shards()[5]
    store.F[region] = store.F[region] * 1.5
    dense[region] *= 1.5
    export_site([store.path], tmp_path / "site", progress=False, tile=8)
    got, scales = decoded_image(read_sheets(tmp_path / "site" / "data" / "bicubic-x4"), "fx0", store.y0.shape)
    want = with_sum(np.tensordot(dense, store.x0, axes=3))
    assert (np.abs(got - want) <= scales[:, None, None] / 254 + 1e-6).all()
    gap = np.abs(got - with_sum(store.y0 - store.residual)).max(axis=(1, 2))
    assert (gap > 20 * scales / 254).all()  # the mismatch is shown, far above the rendering error


def test_panel_attributes_reach_the_manifest(tmp_path):
    """Verification status, Jacobian disclosure and geometry figures go from the store attributes to the
    manifest; a store that records only its verification gets no disclosure and no geometry."""
    a, _ = linear_upscaler_store(tmp_path / "a.zarr", c=1, h=8, w=8, tile=4)
    b, _ = linear_upscaler_store(tmp_path / "b.zarr", mode="bilinear", c=1, h=8, w=8, tile=4)
    approximations = [{"op": "instance_norm", "where": f"block{i}", "kind": "frozen-statistics"} for i in range(2)]
    geometry = {"adaptivity": 0.12, "flashlight_top1": 0.3, "flashlight_mrr": 0.4, "flashlight_chance": 0.01,
                "samples": 200}
    open_store(b.path, mode="r+").update_attrs(
        verification={"status": "failed", "checks": []}, jacobian_exact=False, approximations=approximations,
        geometry=geometry)
    export_site([a.path, b.path], tmp_path / "site", progress=False, allow_unverified=True)
    first, second = read_manifest(tmp_path / "site")["models"]
    assert (first["verification_status"], first["jacobian_exact"], first["approximations"], first["geometry"]) \
        == ("passed", None, [], None)
    assert (second["verification_status"], second["jacobian_exact"]) == ("failed", False)
    assert second["approximations"] == approximations and second["geometry"] == geometry


def test_filters_that_are_all_zero(tmp_path):
    """Pixels without any influence (an all-zero column, rows that ignore a region) export as empty boxes."""
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    store.F[..., 0:4, 0:4] = 0  # the top-left input quarter has no effect
    dense[..., 0:4, 0:4] = 0
    store.F[:, 0:4, 0:4] = 0  # and the top-left output corner ignores everything
    dense[:, 0:4, 0:4] = 0
    export_site([store.path], tmp_path / "site", progress=False)
    sheets = read_sheets(tmp_path / "site" / "data" / "bicubic-x4")
    cols = decoded_filters(sheets, "col", None, (1, 32, 32))
    rows = decoded_filters(sheets, "row", None, (1, 8, 8))
    assert cols[0, 1, 2][2] == (0, 0, 0, 0) and not cols[0, 1, 2][0].any()
    assert rows[0, 2, 3][2] == (0, 0, 0, 0) and rows[0, 20, 20][2][2] > 0
    for (s, y, x), (planes, scales, _) in cols.items():
        assert (np.abs(planes[0] - dense[0, :, :, 0, y, x]) <= scales[0] / 254 + 1e-6).all()


def test_global_normalisation_shares_one_scale(tmp_path):
    store, dense = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    export_site([store.path], tmp_path / "site", normalise="global", progress=False)
    sheets = read_sheets(tmp_path / "site" / "data" / "bicubic-x4")
    for kind, peak in (("col", np.abs(dense).max()), ("row", np.abs(dense).max())):
        got = decoded_filters(sheets, kind, None, (1,) + (dense.shape[1:3] if kind == "col" else dense.shape[4:]))
        scales = {float(v[1][0]) for v in got.values()}
        assert len(scales) == 1 and scales.pop() == pytest.approx(float(peak), rel=1e-6)
        mats = np.moveaxis(dense, (3, 4, 5), (0, 1, 2)) if kind == "col" else dense
        for (s, y, x), (planes, sc, _) in got.items():
            assert (np.abs(planes[0] - mats[0, y, x, 0]) <= peak / 254 + 1e-6).all()


def test_export_resumes_and_is_deterministic(tmp_path, capsys):
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", h=8, w=8, tile=4)
    site = tmp_path / "site"
    first = export_site([store.path], site, progress=False)
    files = {p: p.read_bytes() for p in (site / "data").rglob("*.js")}
    victim = sorted((site / "data" / "bicubic-x4").glob("row_*.js"))[0]
    victim.unlink()
    (site / "data" / "bicubic-x4" / ".done" / ("row_" + victim.stem.split("_", 2)[2])).unlink()
    capsys.readouterr()
    again = export_site([store.path], site)
    assert first["rendered_tasks"] == first["tasks"] and again["rendered_tasks"] == 1
    # the progress log counts the tasks of the first run as done
    log = capsys.readouterr().err.splitlines()
    n = again["tasks"]
    assert log[0] == f"export site: started, {n - 1} of {n} tasks done" and log[-1].startswith(
        f"export site: done, {n} tasks in"), log
    assert {p: p.read_bytes() for p in (site / "data").rglob("*.js")} == files


@pytest.mark.parametrize("scheduler", ["processes", "distributed"])
def test_other_schedulers_give_the_same_site(tmp_path, scheduler):
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    export_site([store.path], tmp_path / "a", scheduler="threads", progress=False)
    export_site([store.path], tmp_path / "b", scheduler=scheduler, workers=2, progress=False)
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.js")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.js")}
    assert a == b and len(a) > 5


def test_two_models_of_one_image(tmp_path):
    a, _ = linear_upscaler_store(tmp_path / "a.zarr", mode="bicubic", h=8, w=8, tile=4)
    b, _ = linear_upscaler_store(tmp_path / "b.zarr", mode="bilinear", h=8, w=8, tile=4)
    export_site([a.path, b.path], tmp_path / "site", progress=False)
    m = (tmp_path / "site" / "data" / "manifest.js").read_text()
    assert '"id":"bicubic-x4"' in m and '"id":"bilinear-x4"' in m
    two = export_site([a.path, b.path], tmp_path / "site", progress=False)["files"]
    one = export_site([b.path], tmp_path / "site", progress=False)  # the same site, now one panel
    assert sorted(p.name for p in (tmp_path / "site" / "data").iterdir() if p.is_dir()) == ["bilinear-x4"]
    assert one["files"] < two and one["files"] == export_site([b.path], tmp_path / "fresh", progress=False)["files"]
    c, _ = linear_upscaler_store(tmp_path / "c.zarr", mode="bilinear", h=8, w=8, tile=4, seed=5)
    with pytest.raises(ExportError, match="another image"):
        export_site([a.path, c.path], tmp_path / "site2", progress=False)
    for inside in (b.path, b.path / "svd", tmp_path / "b.zarr" / "site"):  # a later SVD would replace it
        with pytest.raises(ExportError, match=r"is inside the store .*b\.zarr; choose a folder outside it"):
            export_site([a.path, b.path], inside, progress=False)
    assert not (b.path / "site").exists() and not (b.path / "data").exists()


def test_bad_inputs_give_one_line_errors(tmp_path):
    from pipeline.cli import main

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError):
        export_site([tmp_path / "junk"], tmp_path / "site", progress=False)
    runner = CliRunner()
    for args in (["export", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "s")],
                 ["export", str(tmp_path / "junk"), "--out", str(tmp_path / "s")],
                 ["video", str(tmp_path / "junk"), "--out", str(tmp_path / "w.gif")]):
        res = runner.invoke(main, args)
        assert res.exit_code != 0
        assert "Error:" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    (tmp_path / "notasite").mkdir()
    (tmp_path / "notasite" / "precious.txt").write_text("keep")
    res = runner.invoke(main, ["export", str(store.path), "--out", str(tmp_path / "notasite")])
    assert res.exit_code != 0 and (tmp_path / "notasite" / "precious.txt").read_text() == "keep"


def test_export_command(tmp_path):
    from pipeline.cli import main

    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    res = CliRunner().invoke(main, ["export", str(store.path), "--out", str(tmp_path / "site"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "filters/s" in res.output and (tmp_path / "site" / "index.html").is_file()
