"""Truncated SVD of F(x0) (pipeline/svd.py, `linterp svd`): exact against numpy's dense SVD, both sources.

Stores are real: made by `linterp compute` on small crops (≤ 300 columns), so F fits numpy's dense SVD.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.store import open_store
from pipeline.svd import (Operator, SVDError, interpreter_from_store, model_operator, store_operator,
                          svd_store, truncated_svd)

torch.set_num_threads(1)

#: (model, weights, crop X,Y,W,H): stores of 192, 256 and 300 columns (small: the machine has 2 cores).
CASES = {
    "bicubic-x4": (None, "40,40,8,8"),
    "pixelshuffle-x4": ("random", "40,40,16,16"),
    "edsr-small-x4": ("random", "40,40,10,10"),
}


def dense_operator(matrix: np.ndarray, in_shape, out_shape) -> Operator:
    """F = matrix (m, n) as an operator (tests only)."""
    return Operator(tuple(in_shape), tuple(out_shape),
                    lambda v: (v.reshape(len(v), -1) @ matrix.T).reshape(len(v), *out_shape),
                    lambda u: (u.reshape(len(u), -1) @ matrix).reshape(len(u), *in_shape), precision=1e-14)


def largest_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle (radians) between the row spaces of a (k, n) and b (k, n)."""
    qa, _ = np.linalg.qr(a.reshape(len(a), -1).T)
    qb, _ = np.linalg.qr(b.reshape(len(b), -1).T)
    sines = np.linalg.svd(qb - qa @ (qa.T @ qb), compute_uv=False)  # accurate for small angles
    return float(np.arcsin(np.clip(sines.max(), 0.0, 1.0)))


def gap_k(s: np.ndarray, lo: int, hi: int, rel: float = 2e-3) -> int:
    """The smallest k in [lo, hi] with a relative gap (s_k − s_{k+1}) / s_k > rel, so the top-k subspace
    is well defined (bicubic has exactly repeated singular values: channels and x/y symmetry)."""
    ks = [k for k in range(lo, hi + 1) if (s[k - 1] - s[k]) / s[k - 1] > rel]
    assert ks, f"no gap in {s[:hi + 1]}"
    return ks[0]


def random_matrix(m, n, s, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


# ---- the algorithm on explicit matrices ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["lanczos", "randomized"])
def test_explicit_matrix_matches_dense_svd(method):
    s = np.concatenate([[10, 9, 8, 7.5, 7, 6], np.linspace(3, 0.1, 90)])
    mat = random_matrix(300, 96, s)
    op = dense_operator(mat, (1, 8, 12), (3, 10, 10))
    res = truncated_svd(op, 6, method=method, tol=1e-10, progress=False)
    assert res.info["converged"]
    np.testing.assert_allclose(res.S, s[:6], rtol=1e-10)
    u, _, vt = np.linalg.svd(mat)
    assert largest_angle(res.V, vt[:6]) < 1e-8
    assert largest_angle(res.U, u[:, :6].T) < 1e-8
    assert res.U.shape == (6, 3, 10, 10) and res.V.shape == (6, 1, 8, 12)
    # F vᵢ = sᵢ uᵢ and Fᵀ uᵢ = sᵢ vᵢ, unit vectors
    fv = (res.V.reshape(6, -1) @ mat.T)
    np.testing.assert_allclose(fv, res.S[:, None] * res.U.reshape(6, -1), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(res.V.reshape(6, -1), axis=1), 1, rtol=1e-9)
    assert res.residual_transpose.max() < 1e-9 and res.residual_forward.max() < 1e-9


def test_a_float32_operator_with_a_wide_spectrum_is_not_stopped_by_the_largest_value():
    """The rounding floor of a pair is about ε·s₁·sᵢ, not ε·s₁²: with s₁/s₆ ≈ 550 (a label map's F), the small
    pairs are still refined instead of counted as converged after one step."""
    s = np.concatenate([[1044, 31, 7.8, 4.2, 2.5, 1.89], np.linspace(1.5, 0.01, 60)])
    mat = random_matrix(200, 66, s, seed=3).astype(np.float32)
    op = Operator((66,), (200,), lambda v: (v.astype(np.float32) @ mat.T).astype(np.float64),
                  lambda u: (u.astype(np.float32) @ mat).astype(np.float64), precision=1e-6)
    res = truncated_svd(op, 6, tol=1e-6, progress=False)
    np.testing.assert_allclose(res.S, np.linalg.svd(mat.astype(np.float64), compute_uv=False)[:6], rtol=5e-4)


def test_sign_convention_and_repeatability():
    mat = random_matrix(200, 80, np.geomspace(5, 0.01, 80), seed=3)
    op = dense_operator(mat, (80,), (200,))
    a = truncated_svd(op, 5, progress=False, tol=1e-10)
    b = truncated_svd(op, 5, progress=False, tol=1e-10, seed=7)
    for res in (a, b):
        flat = res.V.reshape(5, -1)
        assert np.all(flat[np.arange(5), np.abs(flat).argmax(axis=1)] > 0)
    # distinct singular values: the vectors themselves agree, whatever the start
    np.testing.assert_allclose(a.V, b.V, atol=1e-8)
    np.testing.assert_allclose(a.U, b.U, atol=1e-8)


def test_thick_restart_flat_spectrum_and_full_rank_deficient():
    # a flat top spectrum forces many steps; a tiny basis forces thick restarts
    s = np.concatenate([1 - 0.01 * np.arange(10), np.linspace(0.8, 0.0, 110)])
    mat = random_matrix(150, 120, s, seed=1)
    op = dense_operator(mat, (120,), (150,))
    res = truncated_svd(op, 5, max_basis=40, tol=1e-9, progress=False)
    assert res.info["converged"]
    np.testing.assert_allclose(res.S, s[:5], rtol=1e-9)
    # k = n with a zero singular value: the whole space, exactly
    full = truncated_svd(op, 120, progress=False, tol=1e-9)
    np.testing.assert_allclose(full.S, s, atol=1e-9)


def test_bad_requests():
    op = dense_operator(np.ones((4, 3)), (3,), (4,))
    with pytest.raises(SVDError, match="out of range"):
        truncated_svd(op, 4, progress=False)
    with pytest.raises(SVDError, match="unknown SVD method"):
        truncated_svd(op, 1, method="arnoldi", progress=False)


# ---- real stores -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    paths = {}
    for name, (weights, crop) in CASES.items():
        path = root / f"{name}.zarr"
        args = ["compute", "--model", name, "--crop", crop, "--out", str(path), "--workers", "1", "--quiet"]
        args += ["--weights", weights] if weights else []
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        paths[name] = path
    return paths


@pytest.mark.parametrize("name", list(CASES))
def test_store_svd_matches_numpy_both_sources(stores, name):
    st = open_store(stores[name])
    c_out, h_out, w_out, c_in, h_in, w_in = st.F.shape
    dense = st.F[...].reshape(c_out * h_out * w_out, -1).astype(np.float64)
    assert dense.shape[1] <= 3000
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    k = gap_k(s, 3, 12)
    results = {}
    for source in ("store", "model"):
        res = svd_store(stores[name], k, source=source, progress=False)
        assert res.info["converged"], res.info
        np.testing.assert_allclose(res.S, s[:k], rtol=1e-4)
        assert largest_angle(res.V, vt[:k]) < 1e-3
        assert largest_angle(res.U, u[:, :k].T) < 1e-3
        assert res.residual_forward.max() < 1e-4 and res.residual_transpose.max() < 1e-4
        stored = open_store(stores[name])
        S, U, V = stored.svd()
        np.testing.assert_allclose(S, res.S, rtol=1e-6)
        assert U.shape == (k, c_out, h_out, w_out) and V.shape == (k, c_in, h_in, w_in)
        assert stored.svd_attrs.source == source and stored.svd_attrs.k == k
        results[source] = res
    a, b = results["store"], results["model"]
    np.testing.assert_allclose(a.S, b.S, rtol=1e-4)
    assert largest_angle(a.V, b.V) < 1e-4 and largest_angle(a.U, b.U) < 1e-4


def test_operators_are_adjoint_and_equal(stores):
    st = open_store(stores["edsr-small-x4"])
    by_store = store_operator(st)
    by_model = model_operator(interpreter_from_store(st), batch=4)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, *by_store.in_shape))
    w = rng.standard_normal((3, *by_store.out_shape))
    fv = by_store.forward(v)
    np.testing.assert_allclose(by_model.forward(v), fv, rtol=0, atol=1e-4 * np.abs(fv).max())
    np.testing.assert_allclose(np.sum(fv * w), np.sum(v * by_store.transpose(w)), rtol=1e-10)
    np.testing.assert_allclose(by_store.apply_normal(v), by_store.transpose(fv), rtol=1e-10, atol=1e-9)


def test_cli_writes_svd_with_dimension_names_and_repeats(stores, tmp_path):
    path = str(stores["pixelshuffle-x4"])
    runner = CliRunner()
    first = runner.invoke(main, ["svd", path, "--k", "4", "--quiet"])
    assert first.exit_code == 0, first.output
    assert "converged" in first.output and "wrote svd" in first.output
    S1, U1, V1 = open_store(path).svd()
    again = runner.invoke(main, ["svd", path, "--k", "4", "--quiet", "--method", "randomized"])
    assert again.exit_code == 0, again.output
    S2, U2, V2 = open_store(path).svd()
    np.testing.assert_allclose(S2, S1, rtol=1e-5)
    np.testing.assert_allclose(V2, V1, atol=1e-3)  # same sign convention, distinct values: same vectors
    np.testing.assert_allclose(U2, U1, atol=1e-3)
    group = zarr.open_group(path, mode="r")
    assert group["svd/S"].metadata.dimension_names == ("k",)
    assert group["svd/U"].metadata.dimension_names == ("k", "c_out", "y_out", "x_out")
    assert group["svd/V"].metadata.dimension_names == ("k", "c_in", "y_in", "x_in")
    assert group["svd/residuals"][...].max() < 1e-4
    assert json.loads(json.dumps(dict(group["svd"].attrs)))["method"] == "randomized"


def test_cli_errors_are_one_line(stores, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["svd", str(tmp_path / "nothing.zarr"), "--k", "2"])
    assert missing.exit_code != 0 and "not a linterp store" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    too_many = runner.invoke(main, ["svd", str(stores["pixelshuffle-x4"]), "--k", "100000", "--quiet"])
    assert too_many.exit_code != 0 and "out of range" in too_many.output
    assert len(too_many.output.strip().splitlines()) == 1


def test_cli_sources_are_mutually_exclusive(stores):
    """--from-store and --from-model together are refused in one line before any work (the last one used to win
    silently); each alone picks its source."""
    path = str(stores["pixelshuffle-x4"])
    runner = CliRunner()
    for flags in (["--from-store", "--from-model"], ["--from-model", "--from-store"]):
        both = runner.invoke(main, ["svd", path, "--k", "2", "--quiet", *flags])
        assert both.exit_code == 1 and both.output.strip() == (
            "Error: --from-store and --from-model exclude each other: give one (or neither: the stored F when the "
            "store is complete, else the model)")
    for flag, source in (("--from-model", "model"), ("--from-store", "store")):
        alone = runner.invoke(main, ["svd", path, "--k", "2", "--quiet", flag])
        assert alone.exit_code == 0, alone.output
        assert open_store(path).svd_attrs.source == source


def test_cli_model_options_refused_with_the_stored_f(stores, tmp_path):
    """--weights / --model / --trust-pickle rebuild the network, which an SVD of the stored F never uses: with a
    complete store (the default source) or --from-store they are refused in one line before any work, and the
    store's SVD is left as it was (they used to be ignored without a word)."""
    path = str(stores["pixelshuffle-x4"])
    runner = CliRunner()
    assert runner.invoke(main, ["svd", path, "--k", "2", "--quiet"]).exit_code == 0
    before = open_store(path).svd()[0].copy()
    weights = tmp_path / "other.pt"
    weights.write_bytes(b"")
    for extra in (["--weights", str(weights)], ["--model", "net.py:make"], ["--trust-pickle"]):
        for source in ([], ["--from-store"]):
            out = runner.invoke(main, ["svd", path, "--k", "3", "--quiet", *source, *extra])
            assert out.exit_code == 1, out.output
            assert len(out.output.strip().splitlines()) == 1 and out.output.strip().endswith(
                f": {extra[0]} only apply to --from-model (the network rebuilt); this SVD "
                "reads F from the complete store: add --from-model or leave them out"), out.output
    np.testing.assert_array_equal(open_store(path).svd()[0], before)


def test_checkpoint_resumes_after_sigkill(tmp_path):
    """A run killed with SIGKILL mid-way resumes from its checkpoint and converges to the dense SVD."""
    import os
    import signal
    import subprocess
    import sys
    import time

    s = 1 - 0.004 * np.arange(60)  # flat: many steps
    mat = random_matrix(80, 60, s, seed=5)
    np.save(tmp_path / "mat.npy", mat)
    checkpoint = tmp_path / "resume.npz"
    script = f"""
import time, numpy as np
from pipeline.svd import Operator, truncated_svd
mat = np.load({str(tmp_path / 'mat.npy')!r})
def slow(fn):
    def apply(a):
        time.sleep(0.3)
        return fn(a)
    return apply
op = Operator((60,), (80,), slow(lambda v: v @ mat.T), slow(lambda u: u @ mat), precision=1e-14)
truncated_svd(op, 3, tol=1e-9, progress=False, checkpoint={str(checkpoint)!r}, checkpoint_seconds=0)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    op = dense_operator(mat, (60,), (80,))
    res = truncated_svd(op, 3, tol=1e-9, progress=False, checkpoint=checkpoint)
    assert res.info["resumed"] and res.info["converged"]
    np.testing.assert_allclose(res.S, s[:3], rtol=1e-10)
    assert checkpoint.exists()  # kept until the caller has stored the result
    # a run stopped by max_iter keeps its checkpoint, and a rerun continues from it
    checkpoint.unlink()
    first = truncated_svd(op, 3, tol=1e-9, max_iter=2, progress=False, checkpoint=checkpoint)
    assert not first.info["converged"] and checkpoint.exists()
    second = truncated_svd(op, 3, tol=1e-9, progress=False, checkpoint=checkpoint)
    assert second.info["resumed"] and second.info["converged"]
    assert second.info["operator_passes"] > first.info["operator_passes"]


class Killed(Exception):
    """Stands for a kill."""


def test_a_converged_svd_killed_before_it_is_written_resumes_at_once(tmp_path, monkeypatch):
    """The checkpoint outlives convergence until the SVD is in the store: a run killed in between (here: at
    write_svd) loses no steps; the rerun writes the same SVD and only then deletes the checkpoint."""
    from test_geometry import dense_store

    from pipeline.store import Store
    from pipeline.svd import CHECKPOINT

    s = 1 - 0.01 * np.arange(36)  # flat: many steps
    F = random_matrix(36, 36, s, seed=6).reshape(1, 6, 6, 1, 6, 6).astype(np.float32)
    reference = svd_store(dense_store(tmp_path / "ref.zarr", F, np.zeros((1, 6, 6))).path, 3, tol=1e-9,
                          progress=False)
    path = dense_store(tmp_path / "s.zarr", F, np.zeros((1, 6, 6))).path

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Store, "write_svd", killed)
        with pytest.raises(Killed):
            svd_store(path, 3, tol=1e-9, progress=False)
    assert (path / CHECKPOINT).exists() and not open_store(path).has_svd
    again = svd_store(path, 3, tol=1e-9, progress=False)
    assert again.info["resumed"] and again.info["converged"] and again.info["iterations"] == 0
    assert reference.info["iterations"] >= 3
    assert again.info["operator_passes"] == reference.info["operator_passes"]  # only the final passes again
    np.testing.assert_allclose(open_store(path).svd()[0], reference.S, rtol=1e-6)
    assert not (path / CHECKPOINT).exists()


def test_progress_counts_digits_of_accuracy_with_lines_throughout(capsys, monkeypatch):
    """Progress is the decades the worst residual has come down, of those tol asks for (it was the step budget,
    500 blocks, while runs converge in tens of steps: no 10 % line in a 13-minute log, a terminal bar ending at
    3 %). In a log, lines come as the digits do; a run stopped early ends short of the total."""
    import pipeline.progress

    monkeypatch.setattr(pipeline.progress, "LOG_INTERVAL", 0.0)  # every 10 % step, however fast the run
    op = dense_operator(random_matrix(300, 300, 1 - 0.002 * np.arange(300), seed=5), (300,), (300,))
    res = truncated_svd(op, 4, tol=1e-8, desc="flat")
    lines = capsys.readouterr().err.splitlines()
    assert res.info["converged"] and res.info["iterations"] > 15
    assert lines[0] == "flat: started, 0 of 8 digits done" and lines[-1].startswith("flat: done, 8 digits in ")
    assert [line.split(" (")[0] for line in lines[1:-1]] == [f"flat: {d}/8 digits" for d in range(1, 8)], lines
    assert all(re.search(r", residual [0-9.e+-]+, pairs \d/4, passes \d+$", line) for line in lines[1:-1]), lines
    truncated_svd(op, 4, tol=1e-8, desc="short", max_iter=3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("short: done, ") and not lines[-1].startswith("short: done, 8 ")


def test_svd_of_a_read_only_store_is_refused_before_any_work(tmp_path):
    """One line, before the SVD runs (it computed until its first checkpoint write, then failed)."""
    from test_geometry import dense_store
    from test_verify import run_read_only

    path = dense_store(tmp_path / "ro.zarr", random_matrix(36, 36, np.linspace(2, 1, 36)).reshape(
        1, 6, 6, 1, 6, 6).astype(np.float32), np.zeros((1, 6, 6))).path
    result = run_read_only(path, "svd", path, "--k", "2")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"Error: the SVD's checkpoint {path / 'svd-resume.npz'}: cannot write there "
                             f"(Read-only file system)\n")


def test_asking_for_more_pairs_than_the_rank_warns_with_the_rank(tmp_path):
    from test_geometry import dense_store

    F = random_matrix(36, 36, np.concatenate([np.linspace(2, 1, 10), np.zeros(26)]), seed=4)
    store = dense_store(tmp_path / "rank10.zarr", F.reshape(1, 6, 6, 1, 6, 6).astype(np.float32),
                        np.zeros((1, 6, 6), np.float32))
    result = CliRunner().invoke(main, ["svd", str(store.path), "--k", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: only 10 of the 20 singular values are above 1e-06·s1" in result.output
    assert "use --k 10" in result.output and "raise --max-iter" not in result.output


@pytest.mark.parametrize("command", [
    ["svd", "S.zarr", "--k", "2", "--tol", "nan"], ["svd", "S.zarr", "--k", "2", "--tol", "inf"],
    ["svd", "S.zarr", "--k", "2", "--tol", "1"], ["svd", "S.zarr", "--k", "2", "--threads", "1000000000"],
    ["classify", "--model", "digits-vgg", "--dataset", "digits", "--attack", "fgsm", "--eps", "nan"],
    ["video", "S.zarr", "--out", "w.mp4", "--fps", "inf"], ["run", "--model", "digits-vgg", "--top", "-1"],
    ["compute", "--model", "bicubic-x4", "--support-tol", "-inf"], ["train", "digits-vgg", "--seed", str(2**64)],
    ["verify", "S.zarr", "--seed", "-1"],
], ids=lambda c: " ".join(c[:1] + c[-2:]))
def test_options_out_of_range_nan_or_inf_are_usage_errors_before_any_work(command, tmp_path, monkeypatch):
    """click's FloatRange lets NaN and ±inf through (every comparison with NaN is false): each such value failed
    later, as a traceback, a NaN in results.json or a video of billions of frames."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, command)
    assert res.exit_code == 2 and "Invalid value for" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["lanczos", "randomized"])
def test_pairs_at_or_beyond_the_rank_still_have_orthonormal_eigen_outputs(method):
    """For a zero singular value F v is rounding noise (or exactly 0): F v / ‖F v‖ was stored as the eigen-output,
    neither of unit norm (zero rows for F = 0) nor orthogonal to the others (Gram off by 0.44 on a 768-column
    pool-then-upsample store with k = 200 > its rank 192). Those rows are now an orthonormal completion."""
    rank10 = random_matrix(40, 30, np.concatenate([np.linspace(2, 1, 10), np.zeros(20)]), seed=6)
    for matrix, k in ((rank10, 14), (np.zeros((40, 30)), 3)):
        res = truncated_svd(dense_operator(matrix, (30,), (40,)), k, method=method, progress=False)
        u = res.U.reshape(k, -1)
        assert np.abs(u @ u.T - np.eye(k)).max() < 1e-8
        assert np.abs(matrix.T @ u[res.S <= 1e-6 * max(res.S[0], 1e-300)].T).max() < 1e-8  # Fᵀu = 0: in the null space
        np.testing.assert_allclose(res.S, np.linalg.svd(matrix, compute_uv=False)[:k], atol=1e-7)


def test_a_zero_f_and_a_stalled_run_get_warnings_that_can_be_followed(tmp_path):
    """F = 0 said "use --k 0" (not a valid --k); a randomized run stopped by the stall test on a flat spectrum said
    "raise --max-iter", which changes nothing: the run stalls at the same step."""
    from test_geometry import dense_store

    zero = dense_store(tmp_path / "zero.zarr", np.zeros((1, 6, 6, 1, 6, 6), np.float32),
                       np.zeros((1, 6, 6), np.float32))
    result = CliRunner().invoke(main, ["svd", str(zero.path), "--k", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: F is zero" in result.output and "--k 0" not in result.output
    u = open_store(zero.path).svd()[1].reshape(2, -1)
    np.testing.assert_allclose(u @ u.T, np.eye(2), atol=1e-6)
    flat = random_matrix(36, 36, 1 - 1e-4 * np.arange(36), seed=5)
    store = dense_store(tmp_path / "flat.zarr", flat.reshape(1, 6, 6, 1, 6, 6).astype(np.float32),
                        np.zeros((1, 6, 6), np.float32))
    result = CliRunner().invoke(main, ["svd", str(store.path), "--k", "4", "--method", "randomized", "--quiet"])
    assert result.exit_code == 0 and "NOT converged" in result.output, result.output
    assert "raise --max-iter" not in result.output and "stopped falling" in result.output
    assert "--method lanczos" in result.output
