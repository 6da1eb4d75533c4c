"""Compact stores (pipeline/compact.py): float16 / bfloat16 values are the float32 F rounded, the support window
keeps the stored dropped mass equal to the true dropped mass and every column within its stored bound, compact
stores resume, read as plain zarr, and refuse what they cannot hold in one line."""
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import zarr

from pipeline.compact import (UNIT_ROUNDOFF, Compaction, CompactionError, compact_block, error_summary,
                              pixel_blocks, relative_bound, round_to)
from pipeline.compute import Source, compute, source_key
from pipeline.models import build
from pipeline.store import ERROR_ARRAYS, open_store

pytestmark = pytest.mark.timeout(300)


def source(name, x0):
    identity = {"model": name, "weights_sha256": "random", "x0": float(x0.sum())}
    return Source(functools.partial(build, name, "random"), x0, source_key(identity)), identity


# ---- rounding -------------------------------------------------------------------------------------------

def test_rounding_equals_torch_and_numpy_conversions():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(20000) * np.exp(rng.uniform(-30, 10, 20000))).astype(np.float32)
    values[:4] = [0.0, -0.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]  # bfloat16 ties: to even
    bf = round_to(values, "bfloat16")
    assert bf.dtype == np.float32 and not (bf.view(np.uint32) & 0xFFFF).any()  # low 16 bits zero
    assert np.array_equal(bf, torch.from_numpy(values).to(torch.bfloat16).float().numpy())
    assert bf[2] == 1.0 and bf[3] == 1.0 + 2 * 2.0 ** -7
    small = values[np.abs(values) < 6e4]
    half = round_to(small, "float16")
    assert half.dtype == np.float16 and np.array_equal(half, small.astype(np.float16))
    assert np.array_equal(round_to(values, "float32"), values)
    with pytest.raises(CompactionError, match="beyond float16's range"):
        round_to(np.array([1.0, -7e4], np.float32), "float16")


def test_compaction_options_are_checked():
    assert not Compaction().active and Compaction("float16").active and Compaction(support_tol=0.0).active
    for bad in (dict(dtype="int8"), dict(support_tol=1.0), dict(support_tol=-1e-3), dict(support_tol=float("nan"))):
        with pytest.raises(CompactionError):
            Compaction(**bad)


# ---- one block, against brute force -------------------------------------------------------------------

def _brute(column, block_rows, block_cols, tol):
    """(radius, dropped L1, kept column) of one column (C, R_h, R_w) by trying every radius in turn."""
    _, r_h, r_w = column.shape
    oy, ox = np.arange(r_h)[:, None], np.arange(r_w)[None, :]
    dist = np.maximum(np.maximum(0, np.maximum(block_rows[0] - oy, oy - block_rows[1] + 1)),
                      np.maximum(0, np.maximum(block_cols[0] - ox, ox - block_cols[1] + 1)))
    mass = np.abs(column.astype(np.float64))
    total = mass.sum()
    for rho in range(int(dist.max()) + 1):
        outside = dist > rho
        if mass[:, outside].sum() <= tol * total:
            return rho, mass[:, outside].sum(), np.where(outside[None], 0, column)
    raise AssertionError("no radius holds the column")


def on_grid(values, column_max, dtype):
    """``values`` of one column rounded to its grid: multiples of 2^e·u, 2^(e−1) ≤ column_max < 2^e (logarithms
    here, frexp in the code), then stored in ``dtype``."""
    if dtype == "float32" or column_max == 0:
        return round_to(values, dtype)
    q = 2.0 ** (np.floor(np.log2(float(column_max))) + 1) * UNIT_ROUNDOFF[dtype]
    return round_to((np.round(values / q) * q).astype(np.float32), dtype)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("float16", 1e-2), ("bfloat16", None), ("float16", 0.0)])
def test_block_against_brute_force(dtype, tol):
    """A ×3 upscaler's tile of 2×3 input pixels over the whole 12×15 output: decaying columns with noise."""
    rng = np.random.default_rng(1)
    c_out, c_in, h_in, w_in, s = 2, 2, 4, 5, 3
    h_out, w_out = h_in * s, w_in * s
    box = (1, 2, 2, 3)
    block = np.zeros((c_out, h_out, w_out, c_in, 2, 3), np.float32)
    oy, ox = np.mgrid[0:h_out, 0:w_out]
    for c, y, x in np.ndindex(c_in, 2, 3):
        cy, cx = (box[0] + y) * s + 1, (box[1] + x) * s + 1
        decay = np.exp(-np.hypot(oy - cy, ox - cx) * rng.uniform(0.5, 2.0))
        block[..., c, y, x] = decay * rng.standard_normal((c_out, h_out, w_out)) * 10.0 ** rng.uniform(-3, 2)
    stored, fig = compact_block(block, (0, 0, h_out, w_out), box, (c_in, h_in, w_in), (c_out, h_out, w_out),
                                Compaction(dtype, tol))
    assert set(fig) == set(ERROR_ARRAYS) and stored.dtype == (np.float16 if dtype == "float16" else np.float32)
    assert not (np.signbit(stored) & (stored == 0)).any()  # no −0.0: zarr would write all-"zero" shards
    lo_y, hi_y = pixel_blocks(h_in, h_out)
    lo_x, hi_x = pixel_blocks(w_in, w_out)
    for c, y, x in np.ndindex(c_in, 2, 3):
        col = block[..., c, y, x]
        ys, xs = box[0] + y, box[1] + x
        rho, dropped, kept = _brute(col, (lo_y[ys], hi_y[ys]), (lo_x[xs], hi_x[xs]), 0.0 if tol is None else tol)
        assert fig["support_radius"][c, y, x] == rho
        if tol is None:
            assert fig["dropped_l1"][c, y, x] == 0
            assert np.array_equal(stored[..., c, y, x], on_grid(col, np.abs(col).max(), dtype))
        else:
            assert fig["dropped_l1"][c, y, x] == pytest.approx(dropped, rel=1e-6, abs=1e-30)
            assert fig["dropped_l1"][c, y, x] >= dropped  # rounded up: still a bound
            assert np.array_equal(stored[..., c, y, x], on_grid(kept, np.abs(col).max(), dtype))
        error = stored[..., c, y, x].astype(np.float64) - col
        assert fig["error_max"][c, y, x] >= np.abs(error).max() and \
            fig["error_max"][c, y, x] == pytest.approx(np.abs(error).max(), rel=1e-6)
        assert fig["error_l1"][c, y, x] == pytest.approx(np.abs(error).sum(), rel=1e-6)
        assert fig["error_l1"][c, y, x] >= fig["dropped_l1"][c, y, x] * (1 - 1e-6)
        assert fig["column_max"][c, y, x] == np.abs(col).max()
        if not tol:  # rounding alone: within the unit roundoff of the column's largest entry, as nearest rounding
            assert np.abs(error).max() <= UNIT_ROUNDOFF[dtype] * np.abs(col).max()
    if tol:  # the truncation did something, and a smaller radius would have dropped too much
        assert fig["dropped_l1"].max() > 0


# ---- stores -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """pixelshuffle-x4 on 20×20 in tiles of 4 (every column on a window): the exact store and compact ones."""
    x0 = np.random.default_rng(2).random((1, 1, 20, 20)).astype(np.float32)
    src, identity = source("pixelshuffle-x4", x0)
    root = tmp_path_factory.mktemp("compact")
    common = dict(identity=identity, tile=4, device="cpu", progress=False, workers=2)
    exact = compute(root / "exact.zarr", src, **common)
    made = {opts: compute(root / f"{opts[0]}-{opts[1]}.zarr", src, dtype=opts[0], support_tol=opts[1], **common)
            for opts in [("float16", 0.02), ("bfloat16", None), ("float32", 0.05)]}
    return src, identity, exact, made


def test_compact_stores_hold_the_rounded_truncated_exact_F(stores):
    _, _, exact, made = stores
    F = exact.F[...]
    h_in, w_in = F.shape[4:]
    lo_y, hi_y = pixel_blocks(h_in, F.shape[1])
    lo_x, hi_x = pixel_blocks(w_in, F.shape[2])
    for (dtype, tol), store in made.items():
        attrs, errors = store.attrs, store.errors()
        assert store.compact and attrs.complete and attrs.dtype == dtype and attrs.support_tol == tol
        assert attrs.identity["dtype"] == dtype and attrs.identity["support_tol"] == tol
        assert store.F.dtype == (np.float16 if dtype == "float16" else np.float32)
        G = store.F[...]
        for c, y, x in np.ndindex(*F.shape[3:]):
            col, got = F[..., c, y, x], G[..., c, y, x]
            rho, dropped, kept = _brute(col, (lo_y[y], hi_y[y]), (lo_x[x], hi_x[x]), tol or 0.0)
            assert np.array_equal(got, on_grid(kept if tol is not None else col, np.abs(col).max(), dtype))
            assert errors["dropped_l1"][c, y, x] == pytest.approx(dropped if tol is not None else 0.0,
                                                                  rel=1e-6, abs=1e-30)
            err = np.abs(got.astype(np.float64) - col)
            assert err.max() <= errors["error_max"][c, y, x] and err.sum() <= errors["error_l1"][c, y, x]
            assert errors["support_radius"][c, y, x] == rho
        # the bound of every row read back: each entry within its column's error_max
        for c, y, x in [(0, 0, 0), (0, 41, 77), (0, 79, 79)]:
            row_err = np.abs(store.row(c, y, x).astype(np.float64) - F[c, y, x])
            assert (row_err <= errors["error_max"]).all()
        summary = error_summary(store)
        assert summary["bound_rel"] == pytest.approx(relative_bound(errors).max())
        expected = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 0.0}[dtype]
        if tol is None:
            assert expected / 4 < summary["bound_rel"] <= expected * (1 + 1e-6)  # half a grid step at most
        else:
            assert summary["dropped_l1"] > 0 and summary["radius_max"] < 40
    # truncated or rounded, a store has fewer bytes than the exact one
    size = lambda s: sum(p.stat().st_size for p in (s.path / "F").rglob("*") if p.is_file())  # noqa: E731
    assert size(made[("float32", 0.05)]) < size(exact) and size(made[("float16", 0.02)]) < size(exact)


def test_compact_store_reads_as_plain_zarr(stores):
    _, _, _, made = stores
    store = made[("bfloat16", None)]
    script = textwrap.dedent(f"""
        import json, zarr
        g = zarr.open_group({str(store.path)!r}, mode="r")
        print(json.dumps({{"dtype": str(g["F"].dtype), "col": g["F"][:, :, :, 0, 3, 4].tolist(),
                          "dims": list(g["error_max"].metadata.dimension_names)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    found = json.loads(out.stdout)
    assert found["dtype"] == "float32" and found["dims"] == ["c_in", "y_in", "x_in"]
    assert np.array_equal(np.array(found["col"], np.float32), store.column(0, 3, 4))
    assert zarr.open_group(str(made[("float16", 0.02)].path), mode="r")["F"].dtype == np.float16


def test_sigkilled_compact_store_resumes_to_the_same_store(stores, tmp_path):
    import imageio.v3 as iio
    from click.testing import CliRunner

    from pipeline.cli import main

    image = tmp_path / "gray.png"
    iio.imwrite(image, np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8))
    args = ["--model", "pixelshuffle-x4", "--weights", "random", "--image", str(image), "--tile", "4",
            "--workers", "1", "--dtype", "float16", "--support-tol", "0.02", "--quiet"]
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "compute", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = killed / "ledger" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ledger.exists() and sum(len(files) for _, _, files in os.walk(ledger)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(open_store(killed).done_tasks())
    assert 3 <= finished < 25 and not open_store(killed).complete

    runner = CliRunner()
    resumed = runner.invoke(main, ["compute", *args, "--out", str(killed)])
    assert resumed.exit_code == 0, resumed.output
    assert "compact store (float16" in resumed.output
    whole = runner.invoke(main, ["compute", *args, "--out", str(tmp_path / "whole.zarr")])
    assert whole.exit_code == 0, whole.output
    a, b = open_store(killed, require_complete=True), open_store(tmp_path / "whole.zarr", require_complete=True)
    assert a.attrs.timings["last_run_tasks"] == 25 - finished
    assert np.array_equal(a.F[...], b.F[...]) and a.stored_shards() == b.stored_shards()
    for name in ERROR_ARRAYS:
        assert np.array_equal(a.group[name][...], b.group[name][...])
    # an exact run, or another tolerance, into the compact store is refused and leaves it as it was
    plain = [w for w in args if w not in ("--dtype", "float16", "--support-tol", "0.02")]
    for other in (plain, plain + ["--dtype", "float16", "--support-tol", "1e-4"]):
        refused = runner.invoke(main, ["compute", *other, "--out", str(killed)])
        assert refused.exit_code == 1 and "made from other inputs" in refused.output
    assert np.array_equal(open_store(killed).F[...], b.F[...])


def test_compact_options_refused_where_they_cannot_apply(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    x0 = np.random.default_rng(3).random((1, 1, 32, 32)).astype(np.float32)
    src, identity = source("digits-vgg", x0)
    with pytest.raises(CompactionError, match="computed by rows"):
        compute(tmp_path / "digits.zarr", src, identity=identity, device="cpu", progress=False, dtype="float16")
    result = CliRunner().invoke(main, ["compute", "--model", "bicubic-x4", "--out", str(tmp_path / "b.zarr"),
                                       "--support-tol", "2", "--quiet"])
    assert result.exit_code == 2 and "support-tol" in result.output


def test_verify_judges_compact_stores_on_their_stored_bounds(stores, tmp_path):
    """A compact store passes `verify` because its differences stay within the stored bounds, and fails once the
    bounds are understated (the checks subtract the stored bounds, not a blanket tolerance)."""
    import shutil

    from pipeline.verify import verify_store

    src, _, _, made = stores
    store = made[("float16", 0.02)]
    report = verify_store(store, src.build)
    assert report.status == "passed", report.summary()
    assert report.figures["compact"] == error_summary(store)
    assert report.figures["compact"]["bound_rel"] > 1e-4  # beyond every float32 tolerance: the bounds are used
    copy = shutil.copytree(store.path, tmp_path / "understated.zarr")
    group = zarr.open_group(str(copy), mode="r+")
    for name in ("error_max", "error_l1"):
        group[name][...] = 0
    report = verify_store(open_store(copy), src.build)
    assert report.status == "failed"
    assert {"reconstruction", "probe", "rows"} <= {c.name for c in report.failed}


def test_verify_fails_a_compact_store_whose_bounds_are_inflated(stores, tmp_path):
    """The checks subtract the stored bounds, so bounds inflated to 1e30, inf or NaN would let any F pass:
    `bounds` compares every column's figures with the stored F (here: negated) and with how they were measured."""
    import shutil

    from pipeline.compact import bound_violations
    from pipeline.verify import verify_store

    src, _, _, made = stores
    for (dtype, tol), store in made.items():  # the stores as computed: every figure fits
        found = {c.name: c for c in verify_store(store, src.build).checks}
        assert found["bounds"].passed and found["bounds"].value == 0, found["bounds"]
    for value in (1e30, np.inf, np.nan):
        copy = shutil.copytree(made[("float16", 0.02)].path, tmp_path / f"inflated-{value}.zarr")
        group = zarr.open_group(str(copy), mode="r+")
        group["F"][...] = -group["F"][...]
        for name in ("error_max", "error_l1", "dropped_l1"):
            group[name][...] = value
        report = verify_store(open_store(copy), src.build)
        found = {c.name: c for c in report.checks}
        assert report.status == "failed" and found["bounds"].passed is False
        assert found["bounds"].value == 400 and "the stored error bounds are damaged" in found["bounds"].detail
    # each rule on its own, on one column of a made-up store (float16, no truncation: 4 entries, largest 1)
    ones = lambda v: np.full((1, 1, 1), v, np.float32)  # noqa: E731
    fine = {"dropped_l1": ones(0), "error_l1": ones(1e-3), "error_max": ones(2.0 ** -11), "column_max": ones(1.0),
            "support_radius": ones(0).astype(np.int32)}
    assert not any(m.any() for m in bound_violations(fine, ones(1.0), ones(2.5), "float16", None, 4).values())
    for name, value, rule in [("error_max", 1e-2, "error_max"), ("column_max", 2.0, "column_max"),
                              ("dropped_l1", 0.5, "dropped_l1"), ("error_l1", 1.0, "error_l1"),
                              ("error_max", -1.0, "finite")]:
        rules = bound_violations(dict(fine, **{name: ones(value)}), ones(1.0), ones(2.5), "float16", None, 4)
        assert rules[rule].all(), (name, value, rule)
