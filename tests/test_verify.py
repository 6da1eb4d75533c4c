"""Verified stores: compute's gate, `linterp verify` (corrupted, lost and stray files, unfinished stores, rows
stores, approximations), resumed computes that repair damaged shards, `export` refusing unverified stores, and
one-line errors for bad output paths."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.commands.errors import one_line
from pipeline.export.site import export_site
from pipeline.shard_io import ShardReadError
from pipeline.interpreter import rules
from pipeline.store import StoreError, open_store

pytestmark = pytest.mark.timeout(600)


def png(path, shape, seed=0) -> str:
    iio.imwrite(path, np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return str(path)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def compute_args(image, out, model="pixelshuffle-x4", tile=4):
    return ["compute", "--model", model, "--weights", "random", "--image", image, "--tile", tile, "--out", out,
            "--quiet"]


def checks(store) -> dict:
    return {c["name"]: c for c in store.attrs["verification"]["checks"]}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """pixelshuffle-x4 on 20×20 with tiles of 4 (25 tasks, columns on windows), computed by the CLI."""
    folder = tmp_path_factory.mktemp("good")
    image = png(folder / "gray.png", (20, 20))
    out = folder / "good.zarr"
    result = run(*compute_args(image, out))
    assert result.exit_code == 0, result.output
    return image, out


def copy_of(good, tmp_path) -> Path:
    out = tmp_path / "copy.zarr"
    shutil.copytree(good[1], out)
    return out


def test_the_gate_passes_and_records_every_check(good):
    store = open_store(good[1], require_complete=True)
    found = checks(store)
    assert set(found) == {"integrity", "reconstruction", "model", "probe", "rows", "jacobian", "windows"}
    assert store.attrs["verification"]["status"] == "passed"
    assert all(c["passed"] for c in found.values()), found
    assert found["windows"]["value"] is not None and found["jacobian"]["value"] is not None
    assert found["reconstruction"]["value"] <= 1e-5 and found["probe"]["value"] <= 1e-5
    assert found["integrity"]["detail"] == f"{len(store.stored_shards())} shards decode"
    assert store.attrs["jacobian_exact"] is True and store.attrs["approximations"] == []
    ledger = store.ledger[...]
    assert ledger.min() >= 2 and (ledger - 2).sum() == len(store.stored_shards())  # shards counted per task
    result = run("verify", good[1], "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "passed" in result.output


def test_a_corrupted_chunk_fails_verify_names_it_and_a_resumed_compute_repairs_it(good, tmp_path):
    out = copy_of(good, tmp_path)
    store = open_store(out)
    before = store.F[...]
    region = max(store.stored_shards(), key=lambda r: (store.path / store.shard_key(r)).stat().st_size)
    key = store.shard_key(region)
    data = bytearray((out / key).read_bytes())
    for i in range(40, 60):  # inside the first inner chunk's compressed bytes
        data[i] ^= 0x5A
    (out / key).write_bytes(bytes(data))

    # damaged data raises the shard reader's one-line error (zarr's own reader leaves asynchronous reads of the
    # shard's other chunks pending, which flood stderr at exit)
    with pytest.raises(ShardReadError, match="does not decode"):
        store.column(region[3].start, region[4].start, region[5].start)
    # in a process of its own, as a user runs it: the failed checks and nothing else (no asynchronous reads of
    # the damaged shard left pending at exit)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED integrity" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr == "" and all(line.startswith("  FAILED ") for line in proc.stdout.splitlines()[1:]), \
        proc.stdout + proc.stderr

    result = run("verify", out, "--quiet", "--write")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{out}: failed") and any(key in line and "integrity" in line for line in lines[1:])
    store = open_store(out)
    assert not store.complete and store.attrs["verification"]["status"] == "failed"
    with pytest.raises(StoreError, match="verification failed"):
        export_site([out], tmp_path / "site", progress=False)

    result = run(*compute_args(good[0], out))  # resumes: the damaged task is recomputed
    assert result.exit_code == 0, result.output
    store = open_store(out, require_complete=True)
    assert np.array_equal(store.F[...], before)
    assert store.attrs["timings"]["last_run_tasks"] == 1


def test_a_store_computed_on_another_device_is_checked_where_it_was_computed_or_says_where_it_was(good, tmp_path):
    import torch

    out = copy_of(good, tmp_path)
    store = open_store(out, mode="r+")
    store.update_attrs(timings=dict(store.attrs["timings"], device="cuda"))
    result = run("verify", out, "--quiet")
    assert result.exit_code == 0 and result.output.count("\n") == 1, result.output  # no note when it passes
    key = store.shard_key(store.stored_shards()[0])
    data = bytearray((out / key).read_bytes())
    for i in range(40, 60):
        data[i] ^= 0x5A
    (out / key).write_bytes(bytes(data))
    result = run("verify", out, "--quiet")
    assert result.exit_code == 1
    note = "computed on cuda, checked on cpu: rounding differs between devices; check on cuda (--device cuda)"
    assert (note in result.output) == (not torch.cuda.is_available()), result.output
    result = run("verify", out, "--quiet", "--device", "cpu")  # asked for explicitly: the note all the same
    assert result.exit_code == 1 and note in result.output, result.output


def test_a_lost_shard_fails_integrity_naming_the_task(good, tmp_path):
    out = copy_of(good, tmp_path)
    store = open_store(out)
    region = store.stored_shards()[len(store.stored_shards()) // 2]
    (out / store.shard_key(region)).unlink()
    result = run("verify", out, "--quiet")
    assert result.exit_code == 1
    task = (region[4].start // 4, region[5].start // 4)
    assert f"task {task} stored" in result.output and "on disk" in result.output
    assert "FAILED probe" in result.output  # the random probe sees the missing values too
    for args in (["export", out, "--out", tmp_path / "site"], ["svd", out, "--k", 2, "--from-store"],
                 ["geometry", out, "--no-write"], ["video", out, "--out", tmp_path / "walk.gif"]):
        result = run(*args)  # the store still says "complete", but a lost shard would read as zeros: refused
        assert result.exit_code != 0 and f"task {task} stored" in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    # the same compute again: the store says it is finished, but the lost shard is counted and recomputed
    result = run(*compute_args(good[0], out))
    assert result.exit_code == 0, result.output
    store = open_store(out, require_complete=True)
    assert store.attrs["timings"]["last_run_tasks"] == 1
    assert np.array_equal(store.F[...], open_store(good[1]).F[...])


def test_stray_files_in_the_chunk_folders_are_ignored(good, tmp_path):
    out = copy_of(good, tmp_path)
    store = open_store(out)
    shards = store.stored_shards()
    (out / "F" / "c" / ".DS_Store").write_bytes(b"\0\1junk")
    first = out / store.shard_key(shards[0])
    (first.parent / (first.name + ".3f2a9c.partial")).write_bytes(b"half a shard")
    (first.parent / ".DS_Store").write_bytes(b"junk")
    assert open_store(out).stored_shards() == shards
    assert run("verify", out, "--quiet").exit_code == 0
    summary = export_site([out], tmp_path / "site", progress=False)
    assert summary["files"] > 0


def test_an_unfinished_store_is_checked_on_its_finished_tasks(good, tmp_path):
    out = copy_of(good, tmp_path)
    store = open_store(out, mode="r+")
    undone = [(0, 0), (2, 3), (4, 4)]
    for region in store.stored_shards():
        if (region[4].start // 4, region[5].start // 4) in undone:
            (out / store.shard_key(region)).unlink()
    store.unmark(undone)
    store.update_attrs(complete=False)
    result = run("verify", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "unverified" in result.output and "FAILED" not in result.output
    from pipeline.verify import verify_store

    report = verify_store(open_store(out))
    found = {c.name: c for c in report.checks}
    assert report.status == "unverified" and found["reconstruction"].value is None
    assert found["probe"].passed and found["rows"].passed and found["windows"].passed
    with pytest.raises(StoreError, match="incomplete"):
        export_site([out], tmp_path / "site", progress=False, allow_unverified=True)


def test_a_wrong_gain_in_one_rule_fails_the_gate_and_leaves_the_store_failed(tmp_path, monkeypatch):
    image = png(tmp_path / "other.png", (16, 16), seed=7)
    monkeypatch.setattr(rules.RELU, "derivative", lambda y, b: y > 0.05 * y.abs().max())  # a wrong mask
    out = tmp_path / "bad.zarr"
    result = run(*compute_args(image, out))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "verification failed" in lines[0] and "jacobian" in lines[0], result.output
    store = open_store(out)
    assert store.finished and not store.complete
    found = checks(store)
    assert store.attrs["verification"]["status"] == "failed"
    assert found["jacobian"]["passed"] is False and found["reconstruction"]["passed"] is False
    with pytest.raises(StoreError, match="verification failed"):
        export_site([out], tmp_path / "site", progress=False)
    result = run("export", out, "--out", tmp_path / "site", "--no-progress")
    assert result.exit_code == 1 and "--allow-unverified" in result.output
    result = run("export", out, "--out", tmp_path / "site", "--no-progress", "--allow-unverified")
    assert result.exit_code == 0, result.output
    manifest = (tmp_path / "site" / "data" / "manifest.js").read_text()
    panel = json.loads(manifest[manifest.index("(") + 1:manifest.rindex(")")])["models"][0]
    assert panel["verification_status"] == "failed" and panel["jacobian_exact"] is True
    assert panel["approximations"] == []


def test_a_store_of_one_shard_says_so_in_the_singular(tmp_path):
    image = png(tmp_path / "gray.png", (8, 8))
    result = run(*compute_args(image, tmp_path / "one.zarr", tile=32))
    assert result.exit_code == 0, result.output
    assert checks(open_store(tmp_path / "one.zarr"))["integrity"]["detail"] == "1 shard decodes"


def test_a_rows_store_is_checked_by_columns_and_vjp(tmp_path):
    image = png(tmp_path / "digit.png", (32, 32), seed=3)
    out = tmp_path / "digits.zarr"
    result = run(*compute_args(image, out, model="digits-vgg"))
    assert result.exit_code == 0, result.output
    store = open_store(out, require_complete=True)
    found = checks(store)
    assert store.attrs["mode"] == "rows" and "columns" in found and "rows" not in found
    assert found["columns"]["passed"] and found["jacobian"]["passed"] and found["jacobian"]["value"] is not None
    assert found["windows"]["value"] is None


def test_approximations_reach_the_store_and_the_site(tmp_path):
    image = png(tmp_path / "rgb.png", (16, 16, 3), seed=4)
    out = tmp_path / "i2i.zarr"
    result = run(*compute_args(image, out, model="i2i-label", tile=8))
    assert result.exit_code == 0, result.output
    store = open_store(out, require_complete=True)
    assert store.attrs["jacobian_exact"] is False
    kinds = {a["kind"] for a in store.attrs["approximations"]}
    assert kinds == {"frozen-statistics", "secant"}
    jac = checks(store)["jacobian"]
    assert jac["passed"] is None and "InstanceNorm2d" in jac["detail"] and "not the Jacobian" in jac["detail"]
    export_site([out], tmp_path / "site", progress=False)
    manifest = (tmp_path / "site" / "data" / "manifest.js").read_text()
    panel = json.loads(manifest[manifest.index("(") + 1:manifest.rindex(")")])["models"][0]
    assert panel["verification_status"] == "passed" and panel["jacobian_exact"] is False
    assert panel["approximations"] == store.attrs["approximations"]


def test_bad_output_paths_give_one_line_errors(good, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    cases = [
        (["export", good[1], "--out", afile / "site", "--no-progress"], "cannot write"),
        (["run", "--model", "bicubic-x4", "--image", png(tmp_path / "rgb.png", (8, 8, 3)), "--out",
          tmp_path / "up.xyz"], "no image writer"),
        (["run", "--model", "bicubic-x4", "--image", tmp_path / "rgb.png", "--out", afile / "up.png"],
         "cannot write"),
        (["train", "digits-vgg", "--out", afile / "w.pt"], "cannot write"),
        (["verify", tmp_path / "nothing.zarr"], "not a linterp store"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert not (tmp_path / "up.xyz").exists()


def test_errors_with_an_empty_message_still_say_something():
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(OSError("\n  first line\nsecond")) == "first line"


def run_read_only(folder, *args) -> subprocess.CompletedProcess:
    """``linterp ARGS`` in a process that sees ``folder`` mounted read-only: a user and mount namespace with a
    read-only bind mount, so writes there fail with EROFS as on a read-only file system, even for root."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare and user namespaces, to mount a folder read-only")
    mount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", mount, "sh", str(folder), sys.executable, "-m",
                           "pipeline.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_verify_write_on_a_read_only_store_prints_the_results_and_one_line(good, tmp_path):
    """The checks still run and print; recording them fails in one line (it was an 83-line EROFS traceback)."""
    out = copy_of(good, tmp_path)
    before = (out / "zarr.json").read_bytes()
    result = run_read_only(out, "verify", "--write", "--quiet", out)
    assert result.returncode == 1, result.stderr
    summary, last = result.stdout.splitlines()
    assert summary.startswith(f"{out}: passed: integrity 0, reconstruction ") and "windows" in summary
    assert last == "  NOT WRITTEN: cannot record the result in the store (Read-only file system)"
    assert result.stderr == "" and (out / "zarr.json").read_bytes() == before


def test_a_store_whose_input_was_replaced_fails_integrity_even_where_f_does_not_depend_on_it(tmp_path):
    """bicubic's F is the same for every input: a store whose x0, y0 and residual were swapped for another image's
    is self-consistent, and only the sha256 of x0 that its identity records tells that it no longer holds the
    input its attributes name."""
    import zarr

    stores = []
    for seed in (0, 1):
        out = tmp_path / f"b{seed}.zarr"
        result = run("compute", "--model", "bicubic-x2", "--image", png(tmp_path / f"{seed}.png", (8, 8, 3), seed),
                     "--out", out, "--quiet")
        assert result.exit_code == 0, result.output
        stores.append(out)
    source, target = (zarr.open_group(str(s), mode="r+") for s in stores)
    for name in ("x0", "y0", "residual"):
        target[name][...] = source[name][...]
    result = run("verify", stores[1], "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "FAILED integrity: 1 > 0 (x0 is not the input the store was computed from (sha256" in result.output
    assert [line for line in result.output.splitlines() if "FAILED" in line] == [
        line for line in result.output.splitlines() if "FAILED integrity" in line]  # every other check passes
