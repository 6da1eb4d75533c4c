"""Matrix-free truncated SVD of the filter matrix F(x0): eigen-inputs and eigen-outputs.

F maps the input domain (C_in, H_in, W_in), n = C_in·H_in·W_in pixels, to the output domain
(C_out, H_out, W_out), m pixels. It is never formed: an *operator* applies it to batches of images, either
through a linear interpreter (`model_operator`: batched `li.forward` / `li.transpose`) or through a stored F
read block by block (`store_operator`: one zarr chunk or shard at a time, all-zero blocks skipped).

The solver works on the normal operator A = FᵀF (n × n, symmetric, positive semi-definite), whose
eigenpairs (s², v) give the right singular pairs; u = F v / s. Two methods, both ending in the same
Rayleigh–Ritz step and the same convergence test, so both are exact to the tolerance asked for:

- ``lanczos`` (default): block Lanczos with full re-orthogonalisation and thick restarts. The search space
  grows by a few vectors per step (``STEP_WIDTH``: the residuals of the leading unconverged Ritz vectors,
  which lie in the next Krylov block), so it converges at the Krylov rate (error ~ exp(-2j·sqrt(gap))), much
  faster than power iteration when the spectrum is flat, which it is for super-resolution (many singular
  values close to the top one). Why not scipy's ``svds``: ARPACK applies F one vector at a time (no batched
  network passes) and LOBPCG is less accurate; measured on edsr-small-x4 at 12×12, k=8, ARPACK needed 236
  F-or-Fᵀ vectors in 11.1 s, this solver (full-block steps) 560 in 10.1 s, with a fixed sign convention,
  checkpoints and both sources on top.
- ``randomized``: randomized subspace iteration (Halko, Martinsson & Tropp 2011) with a Rayleigh–Ritz step
  after every power step: the basis stays one block wide (less memory) but converges at the power rate
  (s_{b+1}/s_i)^(2j).

Every step applies A to a batch of vectors, as one batched pass of the network or one read of the stored F:
for Lanczos the operator's step width (``STEP_WIDTH`` = 8 for a network, whose cost is per vector; the whole
block for a stored F, whose cost is per read), for the randomized method the block b = k + oversample.
The vectors live in float64 in the input domain only (n·8 bytes each); the operator is
applied in float32 (the network's precision) for the model source and in float64 for the store source.

Convergence: the Ritz pair (θ, v) has residual r = A v − θ v, computed without extra operator passes from
the stored products A·Q. Since u = F v / s, ‖Fᵀu − s v‖ / s = ‖r‖ / θ; the run stops when this is below
``tol`` for all k pairs (or stalls at the floating-point floor, or reaches ``max_iter``). The eigenvalue
errors are quadratic in it, and the angle of each singular subspace is at most ‖r‖ / (its gap to the rest
of the spectrum).

Sign convention: the entry of largest magnitude of each eigen-input v_i is positive (first such entry on
ties); the eigen-output u_i follows from u = F v / s, except for pairs with s_i ≤ ``RANK_TOL``·s₁ (F's null
space), whose F v is rounding noise: their u_i complete the others to an orthonormal set. With the fixed seed,
repeated runs give the same vectors.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .shard_io import read_box

#: The methods `truncated_svd` accepts.
METHODS = ("lanczos", "randomized")
#: The checkpoint file `svd_store` keeps inside the store folder while it runs (not part of the Zarr layout).
CHECKPOINT = "svd-resume.npz"
#: Steps (of a full block) without the worst residual halving after which a run counts as stalled.
STALL_STEPS = 30
#: New Lanczos directions per step for operators whose cost is per vector (networks). Narrower than the
#: block (k + oversample) needs fewer vector passes
#: (measured, edsr-small-x4 random weights: k=8 at 12×12, 192 passes against 278 with the full block of 16;
#: k=16 at 16×16, 328 against 447), while a batch of 8 still keeps the network busy; 4 was slower on
#: bicubic's exactly repeated singular values.
STEP_WIDTH = 8
#: Vectors per network pass of ``model_operator`` (its activations are the SVD's memory). Measured on
#: edsr-small-x4, k=8: the full 96×96 face 29.5 s / 1.93 GB peak RSS with 16, 29.4 s / 1.23 GB with 4; the
#: 32×32 demo crop 3.6 s / 844 MB and 3.7 s / 759 MB.
MODEL_BATCH = 4
#: Default memory for the Lanczos basis and its image under FᵀF (two float64 (n, c) arrays), in bytes.
BASIS_BYTES = 512 * 2**20
#: Singular values at or below RANK_TOL·s₁ count as zero (F's numerical rank): their F v is rounding noise, so
#: their eigen-outputs are completed to an orthonormal set instead (``_complete_null``).
RANK_TOL = 1e-6


@dataclass(frozen=True)
class Operator:
    """F as batched maps between image stacks (numpy, float64 or float32).

    forward: (b, *in_shape) -> (b, *out_shape), F v.
    transpose: (b, *out_shape) -> (b, *in_shape), Fᵀ u.
    normal: (b, *in_shape) -> (b, *in_shape), FᵀF v (defaults to transpose(forward(v))).
    precision: the relative accuracy of one application of FᵀF (its rounding floor: about 1e-6 when the
    network runs in float32); residuals below precision·s₁·sᵢ count as converged.
    step_width: the Lanczos directions per step that suit this operator: few (``STEP_WIDTH``) when the cost
    is per vector (a network), None (the whole block) when the cost is per pass (a read of a stored F).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    forward: Callable[[np.ndarray], np.ndarray]
    transpose: Callable[[np.ndarray], np.ndarray]
    normal: Callable[[np.ndarray], np.ndarray] | None = None
    precision: float = 1e-6
    step_width: int | None = None

    @property
    def n(self) -> int:
        return math.prod(self.in_shape)

    @property
    def m(self) -> int:
        return math.prod(self.out_shape)

    def apply_normal(self, v: np.ndarray) -> np.ndarray:
        """FᵀF v for v (b, *in_shape)."""
        if self.normal is not None:
            return self.normal(v)
        return self.transpose(self.forward(v))


@dataclass
class SVDResult:
    """The top-k singular triplets of F, in decreasing order of s.

    S: (k,) singular values. U: (k, *out_shape) eigen-outputs, unit norm. V: (k, *in_shape) eigen-inputs,
    unit norm. residual_forward: (k,) ‖F vᵢ − sᵢ uᵢ‖ / sᵢ (measured with one more pass of F).
    residual_transpose: (k,) ‖Fᵀ uᵢ − sᵢ vᵢ‖ / sᵢ (measured with one more pass of Fᵀ; this is the one
    that measures convergence). info: method, iterations, operator_passes (vectors sent through F and
    back through Fᵀ, the unit of cost), seconds, converged, resumed.
    """

    S: np.ndarray
    U: np.ndarray
    V: np.ndarray
    residual_forward: np.ndarray
    residual_transpose: np.ndarray
    info: dict = field(default_factory=dict)


class SVDError(ValueError):
    """A one-line error for impossible requests (k out of range, unknown method)."""


def _orthonormalize(block: np.ndarray, basis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal columns spanning `block` (n, b) minus its part in span(`basis`) (n, c), orthonormal.

    Two passes of classical Gram–Schmidt against the basis, then an SVD of the block; directions that are
    (numerically) inside the basis already are replaced by random ones, so the block keeps its width while
    the space allows. Returns (n, b') with b' <= b.
    """
    n = block.shape[0]
    room = n - basis.shape[1]
    width = min(block.shape[1], room)
    if width <= 0:
        return block[:, :0]
    scale = np.linalg.norm(block, axis=0).max(initial=0.0)
    for _ in range(2):
        block = block - basis @ (basis.T @ block)
    w, sigma, _ = np.linalg.svd(block, full_matrices=False)
    keep = sigma > 1e-10 * max(scale, np.finfo(float).tiny)
    out = w[:, keep][:, :width]
    missing = width - out.shape[1]
    if missing:
        extra = rng.standard_normal((n, missing))
        full = np.concatenate([basis, out], axis=1)
        for _ in range(2):
            extra = extra - full @ (full.T @ extra)
        extra, _ = np.linalg.qr(extra)
        out = np.concatenate([out, extra], axis=1)
    return out


def _apply(op: Operator, q: np.ndarray) -> np.ndarray:
    """A q for q (n, b) column vectors -> (n, b) float64."""
    v = q.T.reshape((q.shape[1], *op.in_shape))
    return np.asarray(op.apply_normal(v), dtype=np.float64).reshape(q.shape[1], -1).T


def _rayleigh_ritz(q: np.ndarray, z: np.ndarray):
    """All Ritz pairs of A on span(q), with z = A q (q: (n, c) orthonormal).

    Returns theta (c,) decreasing and y (c, c): the Ritz vectors are q y, with A q y = z y.
    """
    t = q.T @ z
    theta, y = np.linalg.eigh(0.5 * (t + t.T))
    order = np.argsort(theta)[::-1]
    return theta[order], y[:, order]


def truncated_svd(op: Operator, k: int, **options) -> SVDResult:
    """The top-k singular triplets of F; options as for `_truncated_svd`.

    numpy runs on one BLAS thread meanwhile: the dense algebra here (n × c products, c × c eigh) is small
    next to the operator passes, and OpenBLAS's threads spin when the cores are busy (measured on the loaded
    2-core dev machine: a 432 × 432 eigh takes 0.11 s on one thread, 11 s on two; a whole bicubic run 5.8 s
    against 21 s). The operator (torch, zarr's decompression) keeps its own threads.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _truncated_svd(op, k, **options)


def _truncated_svd(
    op: Operator,
    k: int,
    method: str = "lanczos",
    tol: float = 1e-6,
    oversample: int | None = None,
    max_iter: int = 500,
    max_basis: int | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint=None,
    checkpoint_seconds: float = 30.0,
    step_width: int | None = None,
    desc: str | None = None,
) -> SVDResult:
    """The top-k singular triplets of F (see the module docstring for the algorithms).

    op: the operator. k: how many triplets (1 <= k <= min(n, m)). method: "lanczos" or "randomized".
    tol: stop when every ‖Fᵀuᵢ − sᵢvᵢ‖/sᵢ <= tol, or is down to the operator's rounding floor
    (‖FᵀF vᵢ − sᵢ² vᵢ‖ <= op.precision·s₁·sᵢ). oversample: extra block vectors (default max(8, k/4)).
    max_iter: most power / Lanczos steps, counted in blocks of vectors (a Lanczos step of `step_width`
    vectors is step_width / block of one). max_basis: most basis vectors Lanczos keeps before a thick restart
    (default: as many as fit in BASIS_BYTES, at least 4 blocks). seed: the starting block's random seed.
    progress: report the digits of accuracy reached, of the ``ceil(-log10(tol))`` asked for (``pipeline.progress``):
    how many decades the worst pair's relative residual has come down below 1, all of them once every pair has
    converged (a terminal bar also shows the steps, the worst residual, the pairs converged and the vector passes).
    Residuals fall by about as many decades per step all along, while the pairs converge near the end, so digits
    give an even rate of progress, an ETA and log lines throughout a long run. checkpoint: a file (.npz) where the
    current Ritz vectors and their images are saved (atomically) every `checkpoint_seconds` and when the run stops,
    converged or not, before the final passes; a run with the same problem and settings resumes from it (a thick
    restart on those vectors; from a converged one, at once). It is left in place: the caller deletes it once the
    result is stored (``svd_store``: after ``Store.write_svd``), so that a kill before then loses no work.
    step_width: new Lanczos directions per step (the residuals of the leading unconverged Ritz pairs);
    default: the operator's ``step_width``, else the whole block. desc: the stage's name in progress reports.
    """
    import time

    from pipeline.progress import progress as stage

    if method not in METHODS:
        raise SVDError(f"unknown SVD method '{method}' (choose from {', '.join(METHODS)})")
    n, m = op.n, op.m
    if not 1 <= k <= min(n, m):
        raise SVDError(f"k = {k} is out of range: F is {m} × {n}, so 1 <= k <= {min(n, m)}")
    block = min(n, k + (oversample if oversample is not None else max(8, k // 4)))
    max_basis = min(n, max_basis or max(4 * block, BASIS_BYTES // (16 * n)))
    step_width = min(block, step_width or op.step_width or block)
    # max_iter counts block-sized batches of vectors, so a budget means the same work whatever the step width
    per_block = 1 if method == "randomized" else math.ceil(block / step_width)
    limit = max_iter * per_block
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    passes = 0

    key = json.dumps({"k": k, "method": method, "block": block, "seed": seed, "tol": tol,
                      "in_shape": list(op.in_shape), "out_shape": list(op.out_shape)})
    resumed = _load_checkpoint(checkpoint, key)
    if resumed is not None:
        q, z, passes = resumed
    else:
        q = _orthonormalize(rng.standard_normal((n, block)), np.zeros((n, 0)), rng)
        z = _apply(op, q)
        passes += q.shape[1]
    saved_at = time.perf_counter()
    history: list[float] = []
    step = 0
    digits = max(1, math.ceil(-math.log10(tol)))
    with stage(digits, desc or f"svd k={k} ({method})", unit="digits", enabled=progress) as bar:
        while True:
            theta, y = _rayleigh_ritz(q, z)
            ritz, ritz_z = q @ y[:, :block], z @ y[:, :block]
            residual = ritz_z - ritz * theta[:block]
            norms = np.linalg.norm(residual[:, :k], axis=0)
            top = max(theta[0], np.finfo(float).tiny)
            worst = float((norms / np.maximum(theta[:k], 1e-300)).max())
            floor = op.precision * np.sqrt(top * np.maximum(theta, 0.0))  # rounding of FᵀF v: about ε·s₁·sᵢ
            done = int(np.count_nonzero(norms <= np.maximum(tol * theta[:k], floor[:k])))
            converged = done == k
            reached = digits if converged else min(digits - 1, max(0, math.floor(-math.log10(max(worst, 1e-300)))))
            bar.note(steps=step, residual=f"{worst:.1e}", pairs=f"{done}/{k}", passes=passes)
            bar.update(max(0, reached - bar.n))
            history.append(worst)
            if converged or step >= limit or q.shape[1] >= n or _stalled(history, STALL_STEPS * per_block):
                break
            step += 1
            if checkpoint is not None and time.perf_counter() - saved_at >= checkpoint_seconds:
                _save_checkpoint(checkpoint, key, ritz, ritz_z, passes)
                saved_at = time.perf_counter()
            if method == "randomized":
                q = _orthonormalize(ritz_z, np.zeros((n, 0)), rng)
                z = _apply(op, q)
                passes += q.shape[1]
                continue
            if q.shape[1] >= max_basis:  # thick restart on the leading Ritz vectors (A q y = z y)
                keep = y[:, : max(block, max_basis // 2)]
                q, z = q @ keep, z @ keep
            # the residuals of the leading unconverged Ritz pairs span the next Krylov directions
            ok = np.linalg.norm(residual, axis=0) <= np.maximum(tol * theta[:block], floor[:block])
            pending = np.flatnonzero(~ok)
            width = min(step_width, max_basis - q.shape[1])
            fresh = _orthonormalize(residual[:, pending[:width]], q, rng)
            if fresh.shape[1] == 0:
                break
            q = np.concatenate([q, fresh], axis=1)
            z = np.concatenate([z, _apply(op, fresh)], axis=1)
            passes += fresh.shape[1]
    if checkpoint is not None:  # a rerun continues from here: at once when converged, else with more steps
        _save_checkpoint(checkpoint, key, ritz, ritz_z, passes)

    theta = theta[:k]
    v = ritz[:, :k]
    s = np.sqrt(np.maximum(theta, 0.0))
    v = _fix_signs(v)
    fv = np.asarray(op.forward(v.T.reshape((k, *op.in_shape))), dtype=np.float64).reshape(k, -1)
    norms = np.linalg.norm(fv, axis=1)
    u = fv / np.where(norms > 0, norms, 1.0)[:, None]
    u = _complete_null(u, (s <= RANK_TOL * s[0]) | (norms == 0), np.random.default_rng([seed, 1]))
    ftu = np.asarray(op.transpose(u.reshape((k, *op.out_shape))), dtype=np.float64).reshape(k, -1)
    passes += k
    safe_s = np.where(s > 0, s, 1.0)
    res_fwd = np.linalg.norm(fv - s[:, None] * u, axis=1) / safe_s
    res_tr = np.linalg.norm(ftu - s[:, None] * v.T, axis=1) / safe_s
    info = {
        "method": method,
        "k": k,
        "block": block,
        "step_width": step_width,
        "iterations": step,
        "operator_passes": passes,
        "converged": bool(converged),
        "tol": tol,
        "seed": seed,
        "resumed": resumed is not None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return SVDResult(
        S=s,
        U=u.reshape((k, *op.out_shape)),
        V=v.T.reshape((k, *op.in_shape)),
        residual_forward=res_fwd,
        residual_transpose=res_tr,
        info=info,
    )


def _stalled(history: list[float], window: int) -> bool:
    """True when the worst relative residual has not halved over the last `window` steps: the run is at its
    rounding floor (or the spectrum is too flat for this basis size), so more steps would be wasted."""
    return len(history) > window and min(history[-window:]) > 0.5 * min(history[:-window])


def _save_checkpoint(path, key: str, ritz: np.ndarray, ritz_z: np.ndarray, passes: int) -> None:
    """Write the Ritz block (n, b), its image under FᵀF and the pass count to `path`, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), q=ritz, z=ritz_z, passes=np.array(passes))
    os.replace(tmp, path)


def _load_checkpoint(path, key: str):
    """(q, z, passes) from a checkpoint of the same problem and settings, else None (a foreign or unreadable
    file is ignored: the run starts afresh and overwrites it)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return data["q"], data["z"], int(data["passes"])
    except (OSError, ValueError, KeyError):
        return None


def _complete_null(u: np.ndarray, null: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """u (k, m) unit rows, with the rows where ``null`` (k,) holds replaced by unit vectors orthogonal to every
    other row and to each other. For a zero singular value F v is rounding noise (or exactly 0), so F v / ‖F v‖
    is neither orthogonal to the other eigen-outputs nor of unit norm, while any such completion is a valid left
    singular vector (Fᵀu ≈ 0 = s v). Rows beyond the m dimensions of the output stay as they are."""
    if not null.any():
        return u
    u = u.copy()
    kept = u[~null].T  # (m, r)
    fresh = _orthonormalize(rng.standard_normal((u.shape[1], int(null.sum()))), np.linalg.qr(kept)[0]
                            if kept.size else np.zeros((u.shape[1], 0)), rng)
    rows = np.flatnonzero(null)[:fresh.shape[1]]
    u[rows] = _fix_signs(fresh).T
    return u


def _fix_signs(v: np.ndarray) -> np.ndarray:
    """Flip columns of v (n, k) so that each one's entry of largest magnitude is positive."""
    idx = np.argmax(np.abs(v), axis=0)
    signs = np.sign(v[idx, np.arange(v.shape[1])])
    return v * np.where(signs == 0, 1.0, signs)


# ---- operators -------------------------------------------------------------------------------------------

def model_operator(li, batch: int = MODEL_BATCH) -> Operator:
    """F through a linear interpreter: batched ``li.forward`` / ``li.transpose`` in the network's dtype.

    li: a ``LinearInterpreter``; batch: vectors per network pass (bounds activation memory).
    """
    import torch

    in_shape = tuple(li.x0.shape[1:])
    out_shape = tuple(li.output.shape[1:])
    dtype, device = li.output.dtype, li.output.device

    def batched(fn, shape):
        def apply(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a)
            out = np.empty((a.shape[0], *shape), dtype=np.float64)
            for start in range(0, a.shape[0], batch):
                part = torch.as_tensor(a[start:start + batch], dtype=dtype, device=device)
                out[start:start + batch] = fn(part).double().cpu().numpy()
            return out
        return apply

    precision = 1e-6 if dtype == torch.float32 else 1e-13
    return Operator(in_shape, out_shape, batched(li.forward, out_shape), batched(li.transpose, in_shape),
                    precision=precision, step_width=STEP_WIDTH)


def store_operator(store) -> Operator:
    """F read from a store, one stored shard at a time (absent shards are zero and skipped), in float64.

    FᵀF v is one read of F: the shards are visited one output region at a time, so only the shards of that
    region are held in memory (as float64, the precision of all products here).
    """
    F = store.F
    in_shape, out_shape = tuple(F.shape[3:]), tuple(F.shape[:3])
    by_output: dict[tuple, list[tuple[slice, ...]]] = {}
    for region in store.stored_shards():
        by_output.setdefault(tuple((s.start, s.stop) for s in region[:3]), []).append(region)

    def read(region) -> np.ndarray:
        block = read_box(F, region)
        return block.reshape(math.prod(block.shape[:3]), -1).astype(np.float64)

    def part(a: np.ndarray, slices) -> np.ndarray:
        return a[(slice(None), *slices)].reshape(a.shape[0], -1)

    def put(a: np.ndarray, slices, values: np.ndarray) -> None:
        view = a[(slice(None), *slices)]
        view += values.reshape(view.shape)

    def forward(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        y = np.zeros((v.shape[0], *out_shape))
        for regions in by_output.values():
            for r in regions:
                put(y, r[:3], part(v, r[3:]) @ read(r).T)
        return y

    def transpose(u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        x = np.zeros((u.shape[0], *in_shape))
        for regions in by_output.values():
            for r in regions:
                put(x, r[3:], part(u, r[:3]) @ read(r))
        return x

    def normal(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        x = np.zeros_like(v)
        for regions in by_output.values():
            blocks = [read(r) for r in regions]
            y = sum(part(v, r[3:]) @ b.T for r, b in zip(regions, blocks))
            for r, b in zip(regions, blocks):
                put(x, r[3:], y @ b)
        return x

    return Operator(in_shape, out_shape, forward, transpose, normal, precision=1e-13)


def interpreter_from_store(store, trust_pickle: bool = False, rtol: float = 1e-4, weights=None, model=None):
    """``interpret(model, x0)`` for the store's model at the store's x0, checked against the stored f(x0).

    The model is rebuilt by ``pipeline.sources.model_from_store`` (``weights``: the weight file, when it is
    neither the registry's default nor in the weight cache; ``model``: where a user model's code is now, or the
    module object). Raises ``SVDError`` when the rebuilt network does not reproduce ``y0`` (to ``rtol`` of its
    largest value).
    """
    import torch

    from pipeline.interpreter import interpret
    from pipeline.sources import model_from_store

    model = model_from_store(store, trust_pickle, weights, model)
    x0 = torch.as_tensor(store.x0)[None]
    with torch.no_grad():
        li = interpret(model, x0)
    y0 = li.output.detach().cpu().numpy().reshape(store.y0.shape)
    error = float(np.abs(y0 - store.y0).max())
    if error > rtol * max(float(np.abs(store.y0).max()), 1e-30):
        raise SVDError(f"{store.path}: the rebuilt model does not reproduce the stored f(x0) "
                       f"(max difference {error:.3g}); use --from-store")
    return li


def svd_store(path, k: int, *, method: str = "lanczos", source: str = "auto", tol: float = 1e-6,
              batch: int = MODEL_BATCH, max_iter: int = 500, seed: int = 0, trust_pickle: bool = False,
              weights=None, model=None, progress: bool = True) -> SVDResult:
    """Compute the top-k SVD of a store's F and write it into the store (``svd/S``, ``svd/U``, ``svd/V``,
    ``svd/residuals``); returns the result.

    source: "store" (the stored F; needs a complete store), "model" (the interpreter rebuilt from the
    store's attributes; ``weights``: its weight file when the registry and the weight cache do not hold it;
    ``model``: where a user model's code is now, or the module object) or
    "auto" (the store when it is complete, else the model); ``weights``, ``model`` or ``trust_pickle`` with the
    stored F is refused (they would be ignored). The written residual of
    pair i is the full triplet residual sqrt(‖F vᵢ − sᵢuᵢ‖² + ‖Fᵀuᵢ − sᵢvᵢ‖²) / sᵢ, which bounds
    ‖F vᵢ − sᵢuᵢ‖ / sᵢ; both parts are also in the ``svd`` group's attributes. A killed run resumes from
    the checkpoint file ``CHECKPOINT`` inside the store folder: written every 30 s and when the iteration stops,
    deleted only after ``Store.write_svd`` has replaced the store's SVD (whole, never mixed with the old one).
    """
    from pipeline.store import SvdAttrs, open_store
    from pipeline.verify import require_intact

    store = open_store(path, mode="r+")
    if source == "auto":
        source = "store" if store.complete else "model"
    if source == "store":
        given = [flag for flag, value in (("--weights", weights), ("--model", model),
                                          ("--trust-pickle", trust_pickle)) if value]
        if given:  # they rebuild the model, which the stored F does not use: never ignore them silently
            raise SVDError(f"{store.path}: {', '.join(given)} only apply to --from-model (the network rebuilt); "
                           f"this SVD reads F from the complete store: add --from-model or leave them out")
        if not store.complete:
            raise SVDError(f"{store.path}: the store is incomplete; finish `linterp compute` or use --from-model")
        require_intact(store)
        op = store_operator(store)
    elif source == "model":
        op = model_operator(interpreter_from_store(store, trust_pickle, weights=weights, model=model), batch=batch)
    else:
        raise SVDError(f"unknown source '{source}' (store, model or auto)")
    result = truncated_svd(op, k, method=method, tol=tol, max_iter=max_iter, seed=seed, progress=progress,
                           checkpoint=store.path / CHECKPOINT, desc=f"svd {store.path.name} k={k} ({method})")
    residuals = np.hypot(result.residual_forward, result.residual_transpose)
    attrs = SvdAttrs(**result.info, source=source, sign_convention="largest-magnitude entry of each V[i] positive",
                     residual_forward=result.residual_forward.tolist(),
                     residual_transpose=result.residual_transpose.tolist())
    store.write_svd(result.S, result.U, result.V, residuals, attrs)
    (store.path / CHECKPOINT).unlink(missing_ok=True)
    return result
