"""`linterp compute`: stores equal the interpreter (and the analytic bicubic kernel), schedulers agree, a
SIGKILLed run resumes to the same store, foreign stores and bad images are refused in one line, and plain
zarr / xarray read the result."""
import functools
import json
import os
import signal
import subprocess
import sys
import shutil
import textwrap
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.compute import Source, compute, make_plan, source_key, tile_columns
from pipeline.interpreter import interpret
from pipeline.models import build
from pipeline.store import FileRef, StoreError, open_store

pytestmark = pytest.mark.timeout(300)


def random_png(path, shape, seed=0):
    iio.imwrite(path, np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return str(path)


def cli(*args):
    result = CliRunner().invoke(main, ["compute", *map(str, args), "--quiet"])
    return result


def source(name, x0):
    identity = {"model": name, "weights_sha256": "random", "x0": float(x0.sum())}
    return Source(functools.partial(build, name, "random"), x0, source_key(identity)), identity


def all_columns(li, in_shape, batch=64):
    """Every column of F by li.forward on one-hot inputs: (C_out, H_out, W_out, C_in, H_in, W_in)."""
    n = int(np.prod(in_shape))
    eye = torch.eye(n).reshape((n,) + tuple(in_shape))
    cols = torch.cat([li.forward(eye[i:i + batch]) for i in range(0, n, batch)])
    cols = cols.reshape((n,) + tuple(li.output.shape[1:]))
    return np.moveaxis(cols.numpy(), 0, -1).reshape(tuple(li.output.shape[1:]) + tuple(in_shape))


def bicubic_matrix(n_in, scale, a=-0.75):
    """1-D bicubic interpolation matrix (n_in·scale, n_in), align_corners=False, clamped borders."""
    def cubic(t):
        t = abs(t)
        if t <= 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        if t < 2:
            return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return 0.0

    K = np.zeros((n_in * scale, n_in))
    for i in range(n_in * scale):
        u = (i + 0.5) / scale - 0.5
        i0 = int(np.floor(u))
        for k in range(-1, 3):
            K[i, min(max(i0 + k, 0), n_in - 1)] += cubic(u - (i0 + k))
    return K


def test_bicubic_store_equals_the_analytic_kernel(tmp_path):
    image = random_png(tmp_path / "rgb.png", (20, 24, 3))
    out = tmp_path / "bicubic.zarr"
    result = cli("--model", "bicubic-x4", "--image", image, "--crop", "3,2,16,12", "--out", out, "--tile", "4")
    assert result.exit_code == 0, result.output
    assert ", 12 tasks in " in result.output
    one = cli("--model", "bicubic-x4", "--image", image, "--crop", "3,2,16,12", "--out", tmp_path / "one.zarr")
    assert one.exit_code == 0 and ", 1 task in " in one.output, one.output
    store = open_store(out, require_complete=True)
    Ky, Kx = bicubic_matrix(12, 4), bicubic_matrix(16, 4)
    kernel = np.einsum("ab,cd->acbd", Ky, Kx)  # (48, 64, 12, 16)
    expected = np.einsum("ij,acbd->iacjbd", np.eye(3), kernel)
    assert store.F.shape == expected.shape == (3, 48, 64, 3, 12, 16)
    assert np.abs(store.F[...] - expected).max() <= 1e-6
    attrs = store.attrs
    assert attrs.crop == [3, 2, 16, 12] and attrs.model == "bicubic-x4" and attrs.complete
    assert attrs.identity["image_sha256"] == attrs.image.sha256 and len(attrs.image.sha256) == 64
    assert attrs.image.name == "rgb.png" and attrs.weights == FileRef(None, None)  # names, never paths
    assert attrs.verification["reconstruction_max_abs"] <= 1e-5
    assert attrs.verification["rows_max_abs"] <= 1e-6
    assert attrs.timings["scheduler"] == "threads" and attrs.format_version == 2
    # the input is the crop in the model's units, and y0 = f(x0)
    rgb = iio.imread(image)[2:14, 3:19].astype(np.float32) / 255
    assert np.allclose(store.x0, rgb.transpose(2, 0, 1), atol=1e-7)
    y0 = torch.nn.functional.interpolate(torch.from_numpy(store.x0[None]), scale_factor=4, mode="bicubic")
    assert np.allclose(store.y0, y0[0].numpy(), atol=1e-6)
    # all-zero shards are not stored: far-apart tiles have no common output
    assert len(store.stored_shards()) < np.prod(store.F.shape) / np.prod(store.F.shards)


def test_edsr_store_equals_interpreter_columns(tmp_path):
    x0 = (np.random.default_rng(1).random((1, 3, 8, 8)) * 255).astype(np.float32)
    src, identity = source("edsr-small-x4", x0)
    store = compute(tmp_path / "edsr.zarr", src, identity=identity, tile=4, device="cpu", progress=False)
    li = interpret(build("edsr-small-x4", "random"), torch.from_numpy(x0))
    expected = all_columns(li, (3, 8, 8))
    # the store's passes run in channels-last layout: other convolution kernels, float32 rounding apart
    assert np.abs(store.F[...] - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.allclose(store.residual, li.residual[0].numpy()) and np.allclose(store.y0, li.output[0].numpy())
    assert store.attrs.mode == "columns"


def test_windowed_columns_equal_full_image_columns():
    """An EDSR tile computed on its cropped window equals the same columns on the whole image."""
    n = 80  # the window (tile + 2 × radius ≈ 46, aligned to 16) must fit inside the image whatever x0 is
    x0 = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(0)) * 255
    li = interpret(build("edsr-small-x4", "random"), x0)
    assert li.receptive_radius is not None and 4 + 2 * li.receptive_radius < n
    box = (24, 8, 4, 4)
    (top, left, h, w), block = tile_columns(li, (3, n, n), box, batch=16, align=(16, 16))
    assert h * w < (4 * n) ** 2  # a real window, not the whole image
    eye = torch.zeros(48, 3, n, n)
    for b, (c, y, x) in enumerate(np.ndindex(3, 4, 4)):
        eye[b, c, box[0] + y, box[1] + x] = 1
    full = li.forward(eye).numpy().reshape(3, 4, 4, 3, 4 * n, 4 * n)
    full = np.moveaxis(full, (3, 4, 5), (0, 1, 2))  # (C_out, H_out, W_out, C_in, 4, 4)
    inside = full[:, top:top + h, left:left + w]
    assert np.abs(block - inside).max() <= 1e-5 * np.abs(inside).max()  # channels-last kernels: rounding apart
    assert np.abs(full).sum() == pytest.approx(np.abs(inside).sum(), rel=1e-6)  # nothing lost outside


@pytest.fixture(scope="module")
def threaded(tmp_path_factory):
    """pixelshuffle-x4 (radius 5 or 6) on 20×20: 25 tiles of 4, so every column is computed on a window."""
    x0 = np.random.default_rng(2).random((1, 1, 20, 20)).astype(np.float32)
    src, identity = source("pixelshuffle-x4", x0)
    path = tmp_path_factory.mktemp("sched") / "threads.zarr"
    compute(path, src, identity=identity, tile=4, device="cpu", progress=False, scheduler="threads", workers=2)
    return x0, src, identity, open_store(path, require_complete=True)


def test_windowed_store_equals_interpreter(threaded):
    x0, _, _, store = threaded
    li = interpret(build("pixelshuffle-x4", "random"), torch.from_numpy(x0))
    assert li.receptive_radius is not None and 4 + 2 * li.receptive_radius < 20
    expected = all_columns(li, (1, 20, 20))
    assert np.abs(store.F[...] - expected).max() <= 1e-6
    assert store.attrs.verification["rows_max_abs"] <= 1e-6


def test_process_and_distributed_schedulers_give_identical_stores(threaded, tmp_path, monkeypatch):
    from distributed import LocalCluster

    x0, src, identity, reference = threaded
    procs = compute(tmp_path / "procs.zarr", src, identity=identity, tile=4, device="cpu", progress=False,
                    scheduler="processes", workers=2)
    # the cluster's workers run in another folder than the client, which names the store relative to its own
    (tmp_path / "workers").mkdir()
    (tmp_path / "client").mkdir()
    monkeypatch.chdir(tmp_path / "workers")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.chdir(tmp_path / "client")
        dist = compute("dist.zarr", src, identity=identity, tile=4, device="cpu", progress=False,
                       scheduler=cluster.scheduler_address)
    assert not (tmp_path / "workers" / "dist.zarr").exists()
    for store in (procs, dist):
        assert np.array_equal(store.F[...], reference.F[...])
        assert np.array_equal(store.y0, reference.y0) and np.array_equal(store.residual, reference.residual)
        assert store.attrs.identity == reference.attrs.identity
        assert sorted(f for f in store.stored_shards()) == sorted(reference.stored_shards())
    # the kind of scheduler is recorded, never the cluster's address
    assert procs.attrs.timings["scheduler"] == "processes" and dist.attrs.timings["scheduler"] == "distributed"
    assert "tcp://" not in (tmp_path / "client" / "dist.zarr" / "zarr.json").read_text()


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from /proc ("R", "S", "Z" ...), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _living(pids) -> list[int]:
    """Those of ``pids`` that still run (neither gone nor a zombie waiting to be reaped)."""
    return [pid for pid in pids if _process_state(pid) not in (None, "Z")]


def _children(pid: int) -> list[int]:
    """The living processes whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return _living(kids)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc")
def test_workers_of_a_killed_processes_run_exit_and_the_run_resumes(tmp_path):
    image = random_png(tmp_path / "gray.png", (24, 24))
    args = ["--model", "pixelshuffle-x4", "--weights", "random", "--image", image, "--tile", "4"]
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "compute", *args, "--out", str(out), "--quiet",
                             "--scheduler", "processes", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = out / "ledger" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ledger.exists() and any(files for _, _, files in os.walk(ledger)):
            break
        time.sleep(0.02)
    workers = _children(proc.pid)  # the spawned workers (and multiprocessing's resource tracker)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert len(workers) >= 2, workers
        deadline = time.time() + 30
        while _living(workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not _living(workers), "workers of the killed run are still running"
    finally:
        for pid in _living(workers):
            os.kill(pid, signal.SIGKILL)

    finished = len(open_store(out).done_tasks())
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", "compute", *args, "--out", str(out),
                              "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert resumed.returncode == 0, resumed.stderr
    # the log counts the tasks of the killed run as done, and says done at the end
    assert f"compute killed.zarr: started, {finished} of 36 tasks done" in resumed.stderr, resumed.stderr
    assert "compute killed.zarr: done, 36 tasks in" in resumed.stderr, resumed.stderr
    assert open_store(out, require_complete=True).attrs.timings["last_run_tasks"] == 36 - finished


def test_sigkill_mid_run_resumes_to_an_identical_store(tmp_path):
    image = random_png(tmp_path / "gray.png", (20, 20))
    args = ["--model", "pixelshuffle-x4", "--weights", "random", "--image", image, "--tile", "4",
            "--workers", "1"]
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "compute", *args, "--out", str(killed), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = killed / "ledger" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = sum(len(files) for _, _, files in os.walk(ledger)) if ledger.exists() else 0
        if done >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = open_store(killed)
    finished = len(partial.done_tasks())
    assert not partial.complete and 3 <= finished < 25
    with pytest.raises(Exception, match="incomplete"):
        open_store(killed, require_complete=True)

    resumed = cli(*args, "--out", killed)
    assert resumed.exit_code == 0, resumed.output
    whole = cli(*args, "--out", tmp_path / "whole.zarr")
    assert whole.exit_code == 0, whole.output
    a, b = open_store(killed, require_complete=True), open_store(tmp_path / "whole.zarr", require_complete=True)
    assert np.array_equal(a.F[...], b.F[...]) and np.array_equal(a.residual, b.residual)
    assert a.done_tasks() == b.done_tasks() == set(np.ndindex(5, 5))
    assert a.attrs.timings["last_run_tasks"] == 25 - finished  # the finished tasks were not redone
    assert a.stored_shards() == b.stored_shards()

    # the same store with another crop, model or image is refused and left as it was
    before = a.F[...]
    for other in (["--crop", "0,0,16,16"], ["--image", random_png(tmp_path / "other.png", (20, 20), seed=5)]):
        refused = cli(*args, *other, "--out", killed)
        assert refused.exit_code == 1
        assert "made from other inputs" in refused.output and len(refused.output.strip().splitlines()) == 1
    refused = cli("--model", "pixelshuffle-x2", "--weights", "random", "--image", image, "--out", killed)
    assert refused.exit_code == 1 and "model is 'pixelshuffle-x4', not 'pixelshuffle-x2'" in refused.output
    assert np.array_equal(open_store(killed).F[...], before)


def test_plain_zarr_and_xarray_read_rows_and_columns(threaded):
    _, _, _, store = threaded
    column, row = store.F[:, :, :, 0, 5, 9], store.F[0, 21, 38]
    assert np.abs(column).max() > 0 and np.abs(row).max() > 0
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, xarray as xr, zarr
        group = zarr.open_group({str(store.path)!r}, mode="r")
        F = group["F"]
        print(json.dumps({{"zarr_column": F[:, :, :, 0, 5, 9].tolist(), "zarr_row": F[0, 21, 38].tolist()}}))
        ds = xr.open_zarr({str(store.path)!r}, consolidated=False)
        col = ds.F.isel(c_in=0, y_in=5, x_in=9).values
        row = ds.F.isel(c_out=0, y_out=21, x_out=38).values
        print(json.dumps({{"xr_column": col.tolist(), "xr_row": row.tolist(), "dims": list(ds.F.dims),
                          "x0_dims": list(ds.x0.dims), "pipeline": "pipeline" in sys.modules}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    first, second = (json.loads(line) for line in out.stdout.strip().splitlines())
    assert np.array_equal(np.array(first["zarr_column"], np.float32), column)
    assert np.array_equal(np.array(first["zarr_row"], np.float32), row)
    assert np.array_equal(np.array(second["xr_column"], np.float32), column)
    assert np.array_equal(np.array(second["xr_row"], np.float32), row)
    assert second["dims"] == ["c_out", "y_out", "x_out", "c_in", "y_in", "x_in"]
    assert second["x0_dims"] == ["c_in", "y_in", "x_in"] and second["pipeline"] is False


def test_classifier_rows(tmp_path):
    """A classifier has 10 outputs and 1024 inputs: rows are computed (one transpose per class)."""
    x0 = np.random.default_rng(3).random((1, 1, 32, 32)).astype(np.float32)
    src, identity = source("digits-vgg", x0)
    store = compute(tmp_path / "digits.zarr", src, identity=identity, tile=4, device="cpu", progress=False)
    assert store.attrs.mode == "rows" and store.F.shape == (10, 1, 1, 1, 32, 32)
    li = interpret(build("digits-vgg", "random"), torch.from_numpy(x0))
    rows = li.transpose(torch.eye(10)).numpy()
    assert np.abs(store.F[:, 0, 0] - rows).max() <= 1e-6 * np.abs(rows).max()
    assert np.allclose(store.y0[:, 0, 0], li.output[0].numpy())
    assert store.attrs.verification["reconstruction_rel"] < 1e-5


@pytest.mark.parametrize("c_in, c_out, mode", [(3, 1, "columns"), (3, 2, "columns"), (32, 1, "rows")])
def test_image_outputs_with_fewer_channels_get_columns(c_in, c_out, mode):
    """Auto mode counts batched passes: an RGB → grey (or → 2-channel) network on 24×24 gets columns (108
    passes of 16 columns; rows would be 576 passes and tasks of one row each), and only an input of more channels
    than a batch makes rows cheaper for an image output."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(c_in, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, c_out, 3, padding=1)).eval()
    li = interpret(net, torch.rand(1, c_in, 24, 24))
    plan = make_plan(li, (c_in, 24, 24))
    assert plan.mode == mode
    if mode == "columns":
        assert plan.tasks == (1, 1) and plan.shards == (c_out, 24, 24, c_in, 24, 24)


def rgb_to_grey():
    """An RGB → grey conv net (8 features, receptive radius 2) with weights from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 1, 3, padding=1)).eval()


def test_auto_mode_resumes_a_store_planned_in_another_mode(tmp_path):
    """An unfinished rows store (as an older linterp's auto mode planned RGB → grey nets) resumes under auto mode
    and the default tile, although auto now picks columns; an explicit other mode or tile is still refused."""
    x0 = np.random.default_rng(6).random((1, 3, 12, 12)).astype(np.float32)
    identity = {"model": "rgb-to-grey", "x0": float(x0.sum())}
    src = Source(rgb_to_grey, x0, source_key(identity))
    out = tmp_path / "grey.zarr"
    assert make_plan(interpret(rgb_to_grey(), torch.from_numpy(x0)), (3, 12, 12)).mode == "columns"
    compute(out, src, identity=identity, mode="rows", tile=16, device="cpu", progress=False, scheduler="sync")
    store = open_store(out, mode="r+")
    undone = [(0, y, x) for y in range(12) for x in range(12) if (y + x) % 3 == 0]
    for _, y, x in undone:  # as a killed run leaves them: not done, their rows of F never written
        store.F[:, y, x] = 0
    store.unmark(undone)
    store.update_attrs(complete=False)

    resumed = compute(out, src, identity=identity, device="cpu", progress=False, scheduler="sync")
    assert resumed.complete and (resumed.attrs.mode, resumed.attrs.tile) == ("rows", 16)
    assert resumed.attrs.timings["last_run_tasks"] == len(undone) and resumed.finished
    F = resumed.F[...].reshape(144, 3 * 144)
    with torch.no_grad():
        y = rgb_to_grey()(torch.from_numpy(x0)).numpy().reshape(144)
    assert np.abs(F @ x0.reshape(-1) + resumed.residual.reshape(-1) - y).max() <= 1e-5 * np.abs(y).max()

    before = resumed.F[...]
    for explicit, diff in (({"mode": "columns"}, "mode is 'rows', not 'columns'"), ({"tile": 8}, "tile is 16, not 8")):
        with pytest.raises(StoreError, match=diff):
            compute(out, src, identity=identity, device="cpu", progress=False, scheduler="sync", **explicit)
    assert np.array_equal(open_store(out, require_complete=True).F[...], before)


def test_auto_mode_resumes_a_store_killed_right_after_its_first_write(tmp_path):
    """A rows store killed after its first write (its zarr.json holds the identity and format version, nothing
    else) resumes under auto mode in the mode it was planned with, as an unfinished one does."""
    x0 = np.random.default_rng(7).random((1, 3, 12, 12)).astype(np.float32)
    identity = {"model": "rgb-to-grey", "x0": float(x0.sum())}
    src = Source(rgb_to_grey, x0, source_key(identity))
    out = tmp_path / "grey.zarr"
    compute(out, src, identity=identity, mode="rows", tile=16, device="cpu", progress=False, scheduler="sync")
    meta = json.loads((out / "zarr.json").read_text())
    first = {key: meta["attributes"][key] for key in ("identity", "format_version")}
    shutil.rmtree(out)
    zarr.open_group(out, mode="w", zarr_format=3, attributes=first)
    assert sorted(p.name for p in out.iterdir()) == ["zarr.json"]

    resumed = compute(out, src, identity=identity, device="cpu", progress=False, scheduler="sync")
    assert resumed.complete and (resumed.attrs.mode, resumed.attrs.tile) == ("rows", 16)
    F = resumed.F[...].reshape(144, 3 * 144)
    with torch.no_grad():
        y = rgb_to_grey()(torch.from_numpy(x0)).numpy().reshape(144)
    assert np.abs(F @ x0.reshape(-1) + resumed.residual.reshape(-1) - y).max() <= 1e-5 * np.abs(y).max()


def test_bad_inputs_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    gray = random_png(tmp_path / "gray.png", (16, 16))
    tiny = random_png(tmp_path / "tiny.png", (4, 4, 3))
    rgb = random_png(tmp_path / "rgb.png", (16, 16, 3))
    cases = [(["--model", "bicubic-x4", "--image", junk], "cannot read image"),
             (["--model", "bicubic-x4", "--image", gray], "needs an RGB image"),
             (["--model", "i2i-label", "--weights", "random", "--image", tiny], "too small"),
             (["--model", "bicubic-x4", "--image", rgb, "--crop", "8,8,16,16"], "goes outside"),
             (["--model", "bicubic-x9", "--image", rgb], "unknown model"),
             (["--model", "bicubic-x4", "--image", rgb, "--device", "cuda"] if not torch.cuda.is_available()
              else ["--model", "bicubic-x4", "--image", rgb, "--scheduler", "nonsense"], "")]
    for args, message in cases:
        result = cli(*args, "--out", tmp_path / "never.zarr")
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals are those of a machine without a GPU")
def test_device_option_takes_cuda_n_and_refuses_other_forms_in_one_line(tmp_path):
    """--device cuda:N is a device as the Python API's is (a GPU torch does not see: the same one line as cuda);
    any other form is refused by the option itself; compute, bundle, video and verify share the option."""
    rgb = random_png(tmp_path / "rgb.png", (16, 16, 3))
    for device in ("cuda", "cuda:0", "cuda:3"):
        result = cli("--model", "bicubic-x4", "--image", rgb, "--device", device, "--out", tmp_path / "never.zarr")
        assert result.exit_code == 1 and result.output.strip() == \
            f"Error: --device {device}: no CUDA GPU is visible to torch", result.output
    assert not (tmp_path / "never.zarr").exists()
    for command in (["compute", "--model", "bicubic-x4", "--out", str(tmp_path / "x.zarr")], ["bundle", "demo"],
                    ["video", "--film", "FilterMatrix_SR"], ["verify", str(tmp_path / "x.zarr")]):
        for device in ("gpu", "cuda:", "cuda:-1", "cpu:0"):
            result = CliRunner().invoke(main, [*command, "--device", device])
            assert result.exit_code == 2 and f"'{device}' is not a device (auto, cpu, cuda or cuda:N)" in \
                result.output, (command, device, result.output)


def test_a_full_disk_is_named_in_one_line(tmp_path):
    """A store on a disk that fills up mid-run: the writer (zarr) raises ENOSPC without a file name; the error
    names the store (it was `Error: [Errno 28] No space left on device`). A 600 KiB tmpfs in a user and mount
    namespace, so the test needs no root and fills no real disk."""
    import shutil

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare and user namespaces, to mount a small tmpfs")
    disk = tmp_path / "small"
    disk.mkdir()
    mount = 'mount -t tmpfs -o size=600k tmpfs "$1" && shift && exec "$@"'
    result = subprocess.run(["unshare", "-rm", "sh", "-c", mount, "sh", str(disk), sys.executable, "-m",
                             "pipeline.cli", "compute", "--model", "pixelshuffle-x4", "--crop", "0,0,40,40",
                             "--out", str(disk / "s.zarr"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"Error: {disk / 's.zarr'}: no space left on device while writing it (free some space "
                             "and rerun)\n")


def test_an_unreachable_cluster_fails_before_any_store_is_written(tmp_path):
    """`--scheduler tcp://…` connects first: a cluster that is not there fails in one line and leaves no store (it
    used to create an empty store, then fail after the connect timeout)."""
    out = tmp_path / "s.zarr"
    env = dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "compute", "--model", "pixelshuffle-x4", "--crop",
                             "0,0,16,16", "--scheduler", "tcp://127.0.0.1:1", "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stderr == "Error: Timed out trying to connect to tcp://127.0.0.1:1 after 2 s\n"
    assert not out.exists()


def test_out_of_memory_on_a_large_photo_is_one_line(tmp_path):
    """A whole 2000×1500 photo through bicubic ×4 with 4 GB of address space: the allocator's refusal is one line
    that says what to do (it was a 40-line torch traceback)."""
    import resource

    image = tmp_path / "big.png"
    iio.imwrite(image, np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "compute", "--model", "bicubic-x4", "--image",
                             str(image), "--out", str(tmp_path / "big.zarr"), "--quiet"],
                            capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: out of memory (") and "can't allocate memory" in lines[0]
    assert lines[0].endswith("); compute a part of the image (--crop X,Y,W,H), or lower --tile or --batch; "
                             "rerunning resumes")
