"""The store layout: creation, validation, refusal of foreign / corrupt / mismatched stores, ledger, SVD, and
stores interrupted at every write of their creation, attribute updates, format upgrade and SVD."""
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import zarr
from zarr.storage import LocalStore

from pipeline.store import (FORMAT_VERSION, INNER_VALUES, FileRef, StoreAttrs, StoreError, SvdAttrs, create_store,
                            layout, open_store)


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
    # negative indices count from the end, as numpy's; outside the domain: one line naming it (it was numpy's
    # "index 0 is out of bounds for axis 1 with size 0")
    assert np.array_equal(again.column(-2, -6, 3), F[..., 1, 2, 3])
    assert np.array_equal(again.row(-1, 5, -11), F[2, 5, 5])
    for read, index, what in ((again.row, (0, 16, 0), "output pixel (0, 16, 0) is outside F's output of shape "
                               "(3, 16, 16) (channel, y, x from 0 to 2, 15, 15)"),
                              (again.column, (0, 0, -9), "input pixel (0, 0, -9) is outside F's input of shape "
                               "(3, 8, 8) (channel, y, x from 0 to 2, 7, 7)")):
        with pytest.raises(IndexError, match=re.escape(what)):
            read(*index)
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
    with pytest.raises(StoreError, match="no zarr.json"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "foreign.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a linterp store"):
        open_store(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="not a linterp store"):
        make(tmp_path / "foreign.zarr")  # never written into
    make(tmp_path / "new.zarr").update_attrs(format_version=FORMAT_VERSION + 1)
    with pytest.raises(StoreError, match=f"format version {FORMAT_VERSION + 1} is newer .*; upgrade linterp"):
        open_store(tmp_path / "new.zarr")
    make(tmp_path / "old.zarr").update_attrs(format_version=0)
    with pytest.raises(StoreError, match="format version 0 is not one this linterp reads .*linterp compute"):
        open_store(tmp_path / "old.zarr")
    make(tmp_path / "odd.zarr")
    zarr.open_group(tmp_path / "odd.zarr", mode="r+").attrs["weights"] = ["edsr.pt"]
    with pytest.raises(StoreError, match=r"corrupt store attributes \(expected \{'name', 'sha256'\}"):
        open_store(tmp_path / "odd.zarr")
    for name, value, wanted in (("scale", "four", "an integer"), ("complete", "yes", "true or false"),
                                ("value_range", [0], "a list of 2 numbers"), ("crop", [0, 0, "w", 4],
                                                                           "a list of 4 integers"),
                                ("output_shape", [3, 1.5], "a list of integers"),
                                ("dtype", "float64", "one of float32, float16, bfloat16")):
        make(tmp_path / f"{name}.zarr")
        zarr.open_group(tmp_path / f"{name}.zarr", mode="r+").attrs[name] = value
        message = f"corrupt store attributes (attribute '{name}' is {value!r}, not {wanted})"
        with pytest.raises(StoreError, match=re.escape(message)):
            open_store(tmp_path / f"{name}.zarr")
    make(tmp_path / "newer.zarr")  # values from a newer vocabulary are read as they are
    zarr.open_group(tmp_path / "newer.zarr", mode="r+").attrs["verification"] = {"status": "partial"}
    assert open_store(tmp_path / "newer.zarr").attrs.verification["status"] == "partial"
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
    for path in ("missing.zarr", "foreign.zarr", "new.zarr", "old.zarr", "odd.zarr", "bad.zarr", "partial.zarr"):
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
    store.write_svd(S, U, V, residuals=[1e-7] * 4, attrs=SvdAttrs(method="lanczos", k=4, converged=True))
    again = open_store(tmp_path / "s.zarr")
    S2, U2, V2 = again.svd()
    assert again.has_svd and S2.dtype == np.float32 and again.svd_k == 4
    assert np.allclose(S2, S) and np.allclose(U2, U) and np.allclose(V2, V)
    assert np.array_equal(again.svd_values(), S2)
    assert again.svd_attrs == SvdAttrs(method="lanczos", k=4, converged=True) and again.svd_attrs["k"] == 4
    assert np.allclose(again.svd_residuals(), 1e-7)
    # the accessors read what plain zarr sees
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert np.allclose(group["svd/residuals"][...], 1e-7) and group["svd"].attrs["method"] == "lanczos"
    store.write_svd(S[:2], U[:2], V[:2])  # replaced, not mixed
    again = open_store(tmp_path / "s.zarr")
    assert again.svd()[0].shape == (2,) and again.svd_k == 2
    assert again.svd_residuals() is None and again.svd_attrs == SvdAttrs()
    assert make(tmp_path / "t.zarr").svd_k == 0 and make(tmp_path / "u.zarr").svd_values().shape == (0,)


def test_vector_outputs_are_stored_as_channels(tmp_path):
    store = make(tmp_path / "c.zarr", in_shape=(1, 8, 8), tile=4, mode="rows")
    assert store.F.shape == (10, 1, 1, 1, 8, 8) and store.ledger.shape == (3, 1, 1)


# ---- the attribute schema ----------------------------------------------------------------------------------

def test_attributes_are_written_and_read_through_the_schema(tmp_path):
    store = make(tmp_path / "s.zarr")
    store.update_attrs(model="bicubic-x2", weights=FileRef(None, None), image={"name": "face.png", "sha256": "ab"},
                       verification={"status": "passed", "checks": [], "reconstruction_rel": 1e-8},
                       approximations=[{"op": "GELU", "where": "body.1", "kind": "secant"}], jacobian_exact=False)
    attrs = open_store(store.path).attrs
    assert isinstance(attrs, StoreAttrs) and attrs.format_version == FORMAT_VERSION == 2
    assert attrs.model == "bicubic-x2" and attrs.scale == 2 and attrs.image == FileRef("face.png", "ab")
    assert attrs.verification["status"] == "passed" and attrs.jacobian_exact is False
    assert attrs["image"] == {"name": "face.png", "sha256": "ab"} and attrs.get("nothing") is None  # dict-style reads
    # every schema field is in the group, as plain JSON that zarr alone reads
    raw = dict(zarr.open_group(store.path, mode="r").attrs)
    assert set(StoreAttrs.names()) <= set(raw) and raw["image"] == {"name": "face.png", "sha256": "ab"}
    assert StoreAttrs.from_json(raw) == attrs
    viewer = attrs.for_viewer()  # what the site's manifest shows: names and digests side by side
    assert viewer["image"] == "face.png" and viewer["image_sha256"] == "ab" and viewer["weights"] is None


@pytest.mark.parametrize("values, message", [
    ({"colour_space": "rgb"}, "colour_space: not store attributes"),
    ({"image": {"name": "/home/me/face.png", "sha256": "ab"}}, "by its name, not a path"),
    ({"weights": {"name": "C:\\weights\\edsr.pt", "sha256": "ab"}}, "by its name, not a path"),
    ({"timings": {"scheduler": "tcp://10.0.0.5:8786"}}, "paths or addresses"),
    ({"note": "/tmp/build/x"}, "paths or addresses"),
    ({"geometry": {"host": "10.1.2.3:22"}}, "paths or addresses"),
    ({"verification": {"status": "fine"}}, "status must be one of passed, failed, unverified"),
    ({"approximations": [{"op": "x", "where": "y", "kind": "guess"}]}, "kind in secant"),
])
def test_schema_refuses_unknown_names_bad_values_and_machine_paths(tmp_path, values, message):
    store = make(tmp_path / "s.zarr")
    before = dict(store.group.attrs)
    with pytest.raises(ValueError, match=message):
        store.update_attrs(**values)
    assert dict(open_store(store.path).group.attrs) == before  # nothing written


def v1_store(path):
    """A store as format 1 wrote it: paths for weights and image, figures without status, a cluster address."""
    store = make(path, {"model": "m", "weights_sha256": "w" * 64, "crop": None})
    group = zarr.open_group(path, mode="r+")
    old = {k: v for k, v in group.attrs.items() if k in ("identity", "scale")}
    group.attrs.clear()
    group.attrs.update(old | {
        "format_version": 1, "complete": True, "model": "m", "weights": "/home/someone/w/edsr.pt",
        "weights_sha256": "w" * 64, "image": "/tmp/photos/face.png", "image_sha256": "i" * 64, "crop": None,
        "verification": {"reconstruction_max_abs": 1e-6, "rows_max_abs": 0.0},
        "timings": {"runs": 1, "scheduler": "tcp://10.0.0.5:8786"}, "mode": "columns", "tile": 4})
    return store


def test_format_1_stores_open_migrated_and_upgrade_when_written(tmp_path):
    path = tmp_path / "v1.zarr"
    v1_store(path)
    attrs = open_store(path, require_complete=True).attrs  # read only: migrated in memory
    assert attrs.weights == FileRef("edsr.pt", "w" * 64) and attrs.image == FileRef("face.png", "i" * 64)
    assert attrs.verification == {"status": "unverified", "checks": [], "reconstruction_max_abs": 1e-6,
                                  "rows_max_abs": 0.0}
    assert attrs.timings["scheduler"] == "distributed" and attrs.complete and attrs.scale == 2
    assert zarr.open_group(path, mode="r").attrs["format_version"] == 1  # untouched on disk
    open_store(path, mode="r+")  # opened for writing: upgraded in place, arrays untouched
    raw = dict(zarr.open_group(path, mode="r").attrs)
    assert raw["format_version"] == 2 and raw["weights"] == {"name": "edsr.pt", "sha256": "w" * 64}
    assert "weights_sha256" not in raw and "/home" not in json.dumps(raw) and "tcp://" not in json.dumps(raw)
    # a compute run with the same inputs resumes a format 1 store (the identity keys are the same)
    v1_store(tmp_path / "v1b.zarr").mark_done((1, 1))
    resumed = make(tmp_path / "v1b.zarr", {"model": "m", "weights_sha256": "w" * 64, "crop": None})
    assert resumed.done_tasks() == {(1, 1)} and resumed.attrs.format_version == 2


# ---- interruptions: a kill between any two writes leaves a store that opens and resumes -------------------

class Killed(Exception):
    """Stands for a kill: raised in place of a write, and of every write after it."""


@contextlib.contextmanager
def killed_at_write(monkeypatch, n):
    """Every file write from the ``n``-th on (zarr's writes and deletions, the renames and deletions of
    ``pipeline.store``) raises ``Killed`` instead of happening; yields a list that gets one entry per write tried."""
    tried = []

    def gate():
        tried.append(None)
        if len(tried) >= n:
            raise Killed(f"killed at write {n}")

    def wrap_async(method):
        async def guarded(self, *args, **kwargs):
            gate()
            return await method(self, *args, **kwargs)
        return guarded

    def wrap(function):
        def guarded(*args, **kwargs):
            gate()
            return function(*args, **kwargs)
        return guarded

    with monkeypatch.context() as patch:
        for name in ("set", "set_if_not_exists", "delete", "delete_dir"):
            patch.setattr(LocalStore, name, wrap_async(getattr(LocalStore, name)))
        patch.setattr(os, "rename", wrap(os.rename))
        patch.setattr(shutil, "rmtree", wrap(shutil.rmtree))
        yield tried


def at_every_write(monkeypatch, path, action, check):
    """Run ``action()`` on the store folder ``path`` (or where it will be) killed at its 1st write, then, from the
    same files, at its 2nd, … until it runs through; ``check(n)`` after the kill at write n. Returns how many
    writes the whole action makes."""
    before = path.with_name(path.name + ".before")
    if path.exists():
        shutil.copytree(path, before)
    n = 1
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, path)
        with killed_at_write(monkeypatch, n) as tried:
            try:
                action()
            except Killed:
                pass
            else:
                return len(tried)
        check(n)
        n += 1


def contents(path) -> dict:
    """Everything a store holds, as plain zarr reads it: attributes and arrays by name (the svd group's too)."""
    group = zarr.open_group(path, mode="r")
    out = {"attrs": dict(group.attrs)}
    for name, array in group.arrays():
        out[name] = array[...].tolist()
    if "svd" in group:
        out["svd"] = {"attrs": dict(group["svd"].attrs)} | {n: a[...].tolist() for n, a in group["svd"].arrays()}
    return out


def test_a_store_killed_at_any_write_of_its_creation_resumes(tmp_path, monkeypatch):
    """The group's first zarr.json holds the identity: a kill after any write of create_store leaves a store that
    the same call resumes, equal to one created in one go (a probe killed `linterp compute` as zarr.json appeared:
    zarr.json held {"model": null, "model_spec": null} and the rerun said "not a linterp store")."""
    reference = contents(make(tmp_path / "ref.zarr").path)
    path = tmp_path / "s.zarr"

    def check(n):
        make(path)  # the rerun resumes
        assert contents(path) == reference, f"killed at write {n}"

    writes = at_every_write(monkeypatch, path, lambda: make(path), check)
    assert writes >= 8  # zarr.json, the attributes, x0, y0, residual (metadata and chunks), F, ledger


def test_a_store_killed_by_sigkill_right_after_its_zarr_json_resumes(tmp_path):
    """The probe's case with a real kill: SIGKILL at the write after the group's first zarr.json."""
    script = f"""
import os, signal, sys
from zarr.storage import LocalStore
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_store import make
original, writes = LocalStore.set, []
async def set(self, key, value):
    writes.append(key)
    if len(writes) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, key, value)
LocalStore.set = set
make({str(tmp_path / "k.zarr")!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((tmp_path / "k.zarr" / "zarr.json").read_text())["attributes"]["identity"]
    make(tmp_path / "k.zarr")
    assert contents(tmp_path / "k.zarr") == contents(make(tmp_path / "ref.zarr").path)


def test_attributes_are_written_all_at_once(tmp_path, monkeypatch):
    """update_attrs writes its values in one write: a kill leaves the old values or the new ones (verify's record
    wrote complete, then verification)."""
    store = make(tmp_path / "s.zarr")
    before = contents(store.path)["attrs"]
    new = {"complete": True, "verification": {"status": "passed", "checks": []}, "note": "checked"}

    def check(n):
        found = open_store(store.path).attrs.to_json()
        assert found == before or all(found[k] == v for k, v in new.items()), f"a mix after a kill at write {n}"

    assert at_every_write(monkeypatch, store.path, lambda: open_store(store.path, mode="r+").update_attrs(**new),
                          check) == 1
    assert open_store(store.path).attrs.note == "checked"


def test_a_format_1_store_killed_while_upgraded_still_opens(tmp_path, monkeypatch):
    """The upgrade to format 2 replaces the attributes in one write: killed at any point, the store opens with the
    same (migrated) attributes, and upgrades when opened for writing again."""
    path = tmp_path / "v1.zarr"
    v1_store(path)
    migrated = open_store(path).attrs

    def check(n):
        assert open_store(path).attrs == migrated, f"killed at write {n}"

    assert at_every_write(monkeypatch, path, lambda: open_store(path, mode="r+"), check) == 1
    assert zarr.open_group(path, mode="r").attrs["format_version"] == FORMAT_VERSION


def test_an_svd_killed_while_replaced_is_the_old_one_or_the_new_one(tmp_path, monkeypatch):
    """write_svd replaces the svd group whole: after a kill at any of its writes, linterp and plain zarr find the
    old SVD, the new one or none, never new S beside old U and V; the next write clears the leftovers."""
    store = make(tmp_path / "s.zarr")
    rng = np.random.default_rng(3)
    old = (rng.random(4), rng.random((4, 3, 16, 16)), rng.random((4, 3, 8, 8)))
    new = (rng.random(2), rng.random((2, 3, 16, 16)), rng.random((2, 3, 8, 8)))
    store.write_svd(*old, residuals=[1e-7] * 4, attrs=SvdAttrs(method="lanczos", k=4))
    seen = {"old": contents(store.path)["svd"]}
    store.write_svd(*new, attrs=SvdAttrs(method="randomized", k=2))
    seen["new"] = contents(store.path)["svd"]
    store.write_svd(*old, residuals=[1e-7] * 4, attrs=SvdAttrs(method="lanczos", k=4))
    found = set()

    def check(n):
        reopened = open_store(store.path)
        svd = contents(store.path).get("svd")
        state = next((name for name, value in seen.items() if svd == value), None if svd else "none")
        assert state is not None, f"a mixed svd group after a kill at write {n}"
        assert reopened.has_svd == (state != "none")
        if reopened.has_svd:
            S, U, V = reopened.svd()
            expect = old if state == "old" else new
            assert np.allclose(S, expect[0]) and np.allclose(U, expect[1]) and np.allclose(V, expect[2])
            assert reopened.svd_attrs.k == len(S)
        found.add(state)

    at_every_write(monkeypatch, store.path,
                   lambda: open_store(store.path, mode="r+").write_svd(*new, attrs=SvdAttrs(method="randomized", k=2)),
                   check)
    assert found == {"old", "none", "new"}
    assert contents(store.path)["svd"] == seen["new"]
    assert sorted(p.name for p in store.path.iterdir() if "svd" in p.name) == ["svd"]  # leftovers cleared
