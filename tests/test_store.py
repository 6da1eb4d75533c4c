"""The store layout: creation, validation, refusal of foreign / corrupt / mismatched stores, ledger, SVD."""
import json
import math
import os

import numpy as np
import pytest

from pipeline.store import (FORMAT_VERSION, INNER_VALUES, StoreError, create_store, layout, open_store)


def make(path, identity=None, in_shape=(3, 8, 8), scale=2, tile=4, mode="columns"):
    rng = np.random.default_rng(0)
    c, h, w = in_shape
    x0 = rng.random(in_shape, dtype=np.float32)
    out = (c, h * scale, w * scale) if mode == "columns" else (10, 1, 1)
    y0 = rng.random(out, dtype=np.float32)
    shards, chunks, tasks = layout(in_shape, out, tile, mode)
    return create_store(path, identity=identity or {"model": "m", "crop": [0, 0, w, h]}, attrs={"scale": scale},
                        x0=x0, y0=y0, residual=y0 / 2, shards=shards, chunks=chunks, tasks=tasks)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_layout_shards_match_tiles_and_chunks_are_bounded():
    for in_shape, out_shape, tile in [((3, 64, 64), (3, 256, 256), 16), ((1, 24, 20), (1, 96, 80), 8),
                                      ((3, 30, 30), (3, 30, 30), 7), ((3, 5, 5), (3, 15, 15), 16)]:
        shards, chunks, tasks = layout(in_shape, out_shape, tile)
        assert shards[4:] == (min(tile, in_shape[1]), min(tile, in_shape[2]))
        scale = out_shape[1] // in_shape[1]
        assert shards[1:3] == (shards[4] * scale, shards[5] * scale)
        assert all(s % c == 0 for s, c in zip(shards, chunks))
        assert math.prod(chunks) <= INNER_VALUES or chunks == shards
        assert tasks == (math.ceil(in_shape[1] / shards[4]), math.ceil(in_shape[2] / shards[5]))
    shards, chunks, tasks = layout((3, 32, 32), (1000, 1, 1), 16, "rows")
    assert shards == (16, 1, 1, 3, 32, 32) and chunks == (1, 1, 1, 3, 32, 32) and tasks == (63, 1, 1)


def test_create_write_read_and_sparse_chunks(tmp_path):
    store = make(tmp_path / "s.zarr")
    F = np.zeros(store.F.shape, np.float32)
    F[:, 0:8, 0:8, :, 0:4, 0:4] = np.random.default_rng(1).random((3, 8, 8, 3, 4, 4))
    store.F[:, 0:8, 0:8, :, 0:4, 0:4] = F[:, 0:8, 0:8, :, 0:4, 0:4]
    again = open_store(tmp_path / "s.zarr")
    assert np.array_equal(again.F[...], F)
    assert np.array_equal(again.column(1, 2, 3), F[..., 1, 2, 3])
    assert np.array_equal(again.row(2, 5, 6), F[2, 5, 6])
    assert again.x0.shape == (3, 8, 8) and again.y0.shape == again.residual.shape == (3, 16, 16)
    assert np.array_equal(again.residual, again.y0 / 2)
    assert again.attrs["format_version"] == FORMAT_VERSION and again.attrs["scale"] == 2
    assert not again.complete
    # one shard written out of 2x2 x 2x2; the all-zero ones are absent
    assert [f for f in files_under(tmp_path / "s.zarr" / "F") if f != "zarr.json"] == [
        os.path.join("c", "0", "0", "0", "0", "0", "0")]
    assert [tuple(s.start for s in r) for r in again.stored_shards()] == [(0, 0, 0, 0, 0, 0)]
    meta = json.loads((tmp_path / "s.zarr" / "F" / "zarr.json").read_text())
    assert meta["dimension_names"] == ["c_out", "y_out", "x_out", "c_in", "y_in", "x_in"]
    assert meta["fill_value"] == 0.0
    assert "zstd" in json.dumps(meta["codecs"])
    # writing zeros over a stored shard removes its file
    store.F[:, 0:8, 0:8, :, 0:4, 0:4] = 0
    assert again.stored_shards() == []


def test_ledger_records_tasks(tmp_path):
    store = make(tmp_path / "s.zarr")
    assert store.done_tasks() == set()
    store.mark_done((1, 0))
    store.mark_done((0, 1))
    assert open_store(tmp_path / "s.zarr").done_tasks() == {(1, 0), (0, 1)}


def test_resume_same_identity_and_refuse_other(tmp_path):
    path = tmp_path / "s.zarr"
    store = make(path, {"model": "m", "crop": (0, 0, 8, 8)})
    store.mark_done((0, 0))
    store.F[:, 0:8, 0:8, :, 0:4, 0:4] = 1.0
    resumed = make(path, {"model": "m", "crop": [0, 0, 8, 8]})  # tuples and lists are the same identity
    assert resumed.done_tasks() == {(0, 0)} and resumed.F[0, 0, 0, 0, 0, 0] == 1.0
    with pytest.raises(StoreError, match=r"made from other inputs \(crop is \[0, 0, 8, 8\], not \[1, 0, 8, 8\]\)"):
        make(path, {"model": "m", "crop": [1, 0, 8, 8]})
    with pytest.raises(StoreError, match="model is 'm', not 'n'"):
        make(path, {"model": "n", "crop": [0, 0, 8, 8]})
    assert open_store(path).F[0, 0, 0, 0, 0, 0] == 1.0  # nothing was touched


def test_refuses_foreign_and_corrupt(tmp_path):
    import zarr

    with pytest.raises(StoreError, match="no zarr.json"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "foreign.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a linterp store"):
        open_store(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="not a linterp store"):
        make(tmp_path / "foreign.zarr")  # never written into
    make(tmp_path / "old.zarr").update_attrs(format_version=FORMAT_VERSION + 1)
    with pytest.raises(StoreError, match="format version"):
        open_store(tmp_path / "old.zarr")
    make(tmp_path / "bad.zarr")
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        open_store(tmp_path / "bad.zarr")
    make(tmp_path / "partial.zarr")
    for f in files_under(tmp_path / "partial.zarr" / "y0"):
        os.remove(tmp_path / "partial.zarr" / "y0" / f)
    with pytest.raises(StoreError, match="y0"):
        open_store(tmp_path / "partial.zarr")
    incomplete = make(tmp_path / "inc.zarr")
    with pytest.raises(StoreError, match="incomplete"):
        open_store(incomplete.path, require_complete=True)
    # every message is one line
    for path in ("missing.zarr", "foreign.zarr", "old.zarr", "bad.zarr", "partial.zarr"):
        with pytest.raises(StoreError) as info:
            open_store(tmp_path / path)
        assert "\n" not in str(info.value)


def test_svd_round_trip(tmp_path):
    store = make(tmp_path / "s.zarr")
    assert not store.has_svd
    with pytest.raises(StoreError, match="no SVD"):
        store.svd()
    rng = np.random.default_rng(2)
    S, U, V = rng.random(4), rng.random((4, 3, 16, 16)), rng.random((4, 3, 8, 8))
    store.write_svd(S, U, V, residuals=[1e-7] * 4, attrs={"method": "lobpcg"})
    again = open_store(tmp_path / "s.zarr")
    S2, U2, V2 = again.svd()
    assert again.has_svd and S2.dtype == np.float32
    assert np.allclose(S2, S) and np.allclose(U2, U) and np.allclose(V2, V)
    assert again.svd_attrs == {"method": "lobpcg"}
    assert np.allclose(again.group["svd"]["residuals"][...], 1e-7)
    store.write_svd(S[:2], U[:2], V[:2])  # replaced, not mixed
    assert open_store(tmp_path / "s.zarr").svd()[0].shape == (2,)
    assert "residuals" not in open_store(tmp_path / "s.zarr").group["svd"]


def test_vector_outputs_are_stored_as_channels(tmp_path):
    store = make(tmp_path / "c.zarr", in_shape=(1, 8, 8), tile=4, mode="rows")
    assert store.F.shape == (10, 1, 1, 1, 8, 8) and store.ledger.shape == (3, 1, 1)
