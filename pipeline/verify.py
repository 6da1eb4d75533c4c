"""Verification of stores: independent re-checks that a store holds the right F(x0).

``verify_store(store)`` runs the checks below on a finished or unfinished store (an unfinished one is checked
on its finished tasks) and returns a ``Report``; ``compute`` ends with the same checks (``gate``) and marks a
store ``complete`` only when they pass. Every check has a default tolerance (``TOLERANCES``); values are
relative max errors: max |stored − reference| / max |reference| over what the check compares.

==================  =========  ======================================================================================
check               tolerance  what it compares
==================  =========  ======================================================================================
``integrity``       0          every stored shard of F decodes (zstd checksums), every finished task has the
                               shards its ledger entry counts, and x0 has the sha256 the identity records; the
                               value is the number of bad shards, tasks and inputs
``bounds``          0          compact stores: every column's stored error figures fit the stored F and how they
                               were measured (``compact.bound_violations``); the value is the number that do not
``reconstruction``  1e-4       F·x0 + r = y0, with F·x0 contracted from the stored F (finished stores only),
                               relative to the largest of |y0|, |F·x0| and |r|
``model``           1e-4       the model rebuilt from the store reproduces the stored y0 = f(x0)
``probe``           1e-4       F·v and Fᵀ·u for seeded random v, u: the stored F against a freshly built
                               interpreter (covers every entry of F at once: lost shards, misplaced tiles)
``rows``            1e-4       columns stores: sampled rows of the stored F against transposes Fᵀe of the fresh
                               interpreter (``columns`` for rows stores: sampled columns against F·e)
``jacobian``        1e-4       when every rule used is exact (piecewise-linear networks): sampled columns against
                               ``torch.func.jvp`` of the original model (rows against ``torch.func.vjp`` for rows
                               stores); skipped, with the approximations named, otherwise
``windows``         1e-5       stores computed on windows: sampled columns (at tile and image corners) computed
                               on the whole image against the stored ones; skipped when no windows were used
==================  =========  ======================================================================================

The tolerances are float32 figures: the stored F is float32, and the references are float32 network passes
whose summation order differs from the compute's. A compact store (``pipeline.compact``) is judged on what its
per-column error arrays promise: each check subtracts the stored bound of the difference it looks at (Σ_j
|w_j|·error_max_j for F·w, error_l1_j·max|u| for (Fᵀu)_j, error_max_j for the entries of column j and of every
row at input j) before the float32 tolerance applies; the report's ``compact`` figures give the bound, and
``bounds`` checks that it is not inflated. Status: ``passed`` (finished, every check passed), ``failed`` (a check
failed), ``unverified`` (unfinished, or a check that needs the model could not run).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from . import shard_io
from .progress import counted
from .store import LEDGER_COUNT_MAX, Store

#: Default tolerance of each check (see the module docstring).
TOLERANCES = {"integrity": 0, "bounds": 0, "reconstruction": 1e-4, "model": 1e-4, "probe": 1e-4, "rows": 1e-4,
              "columns": 1e-4, "jacobian": 1e-4, "windows": 1e-5}
#: Default number of sampled rows or columns per check.
DEFAULT_SAMPLES = 8
#: Most values of F decoded at once while reading the store.
READ_VALUES = 2**23
#: Most vectors per network pass in the model checks: a whole-image pass holds every feature map once per vector
#: (the full-face EDSR4x store: ≈ 120 MB a vector), so the checks' samples go through a few at a time.
PASS_VECTORS = 2


class VerificationError(ValueError):
    """A store failed its verification (one line naming the failed checks)."""


@dataclass
class Check:
    """One check: ``value`` (None when it did not run), ``tolerance``, ``passed`` (None: skipped or not run,
    as ``detail`` says) and a one-line ``detail``."""

    name: str
    value: float | None
    tolerance: float | None
    passed: bool | None
    detail: str = ""

    def line(self) -> str:
        if self.value is None:
            return f"{self.name}: {self.detail}"
        op = "<=" if self.passed else ">"
        return f"{self.name}: {self.value:.3g} {op} {self.tolerance:g}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Report:
    """The result of ``verify_store``: status, checks and free figures (JSON-ready through ``as_attr``)."""

    status: str
    checks: list[Check]
    figures: dict = field(default_factory=dict)

    def as_attr(self) -> dict:
        """The store's ``verification`` attribute."""
        return {"status": self.status, "checks": [asdict(c) for c in self.checks], **self.figures}

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    @property
    def not_run(self) -> list[Check]:
        return [c for c in self.checks if c.passed is None and c.detail.startswith("not run")]

    def summary(self) -> str:
        """One line: the status, each check's figure (or "failed") and the checks that did not apply or run."""
        figures = ", ".join(f"{c.name} {c.value:.2g}" if c.value is not None else f"{c.name} failed"
                            for c in self.checks if c.value is not None or c.passed is False)
        skipped = [c.name for c in self.checks if c.value is None and c.passed is None]
        return (f"{self.status}: {figures}" + (f"; not checked: {', '.join(skipped)}" if skipped else "")
                + f" ({self.figures.get('seconds', 0):.1f} s)")


# ---- the store's task grid -------------------------------------------------------------------------------

def store_mode(store: Store) -> str:
    """"columns" or "rows": how the store's F was computed (from its attributes, else from its shard shape)."""
    mode = store.attrs.get("mode")
    if mode in ("columns", "rows"):
        return mode
    shards = store.F.shards or store.F.chunks
    return "rows" if tuple(shards[3:]) == tuple(store.in_shape) and tuple(shards[1:3]) == (1, 1) else "columns"


def task_of(store: Store, region: tuple[slice, ...], mode: str) -> tuple[int, ...]:
    """The compute task that writes a shard region of F."""
    shards = store.F.shards or store.F.chunks
    if mode == "rows":
        return (region[0].start // shards[0], region[1].start, region[2].start)
    return (region[4].start // shards[4], region[5].start // shards[5])


def done_masks(store: Store, mode: str, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input mask (H_in, W_in), output mask (C_out, H_out, W_out)) of what the finished tasks computed:
    columns stores finish input tiles (every output), rows stores finish output rows (every input)."""
    shards = store.F.shards or store.F.chunks
    _, h_in, w_in = store.in_shape
    if mode == "rows":
        out = np.zeros(store.out_shape, bool)
        for b, y, x in np.argwhere(done):
            out[b * shards[0]:(b + 1) * shards[0], y, x] = True
        return np.ones((h_in, w_in), bool), out
    inp = np.zeros((h_in, w_in), bool)
    for ty, tx in np.argwhere(done):
        inp[ty * shards[4]:(ty + 1) * shards[4], tx * shards[5]:(tx + 1) * shards[5]] = True
    return inp, np.ones(store.out_shape, bool)


# ---- reading every shard once ---------------------------------------------------------------------------

def _pieces(region: tuple[slice, ...], chunks: tuple[int, ...], limit: int):
    """Split a region of F into pieces aligned to the inner chunks, each of at most ``limit`` values (or one
    inner chunk), splitting the leading axes first."""
    sizes = [s.stop - s.start for s in region]
    if math.prod(sizes) <= limit:
        yield region
        return
    for axis in range(len(region)):
        if sizes[axis] > chunks[axis]:
            rest = math.prod(sizes) // sizes[axis]
            step = max(chunks[axis], limit // max(1, rest) // chunks[axis] * chunks[axis])
            for start in range(region[axis].start, region[axis].stop, step):
                sub = list(region)
                sub[axis] = slice(start, min(start + step, region[axis].stop))
                yield from _pieces(tuple(sub), chunks, limit)
            return
    yield region


def _bad_chunk(F, piece: tuple[slice, ...]) -> tuple[int, ...] | None:
    """The index (in F's inner-chunk grid) of the first inner chunk of ``piece`` that does not decode."""
    chunks = F.chunks
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(piece, chunks)]
    for index in np.ndindex(*[len(r) for r in ranges]):
        ix = tuple(r[i] for r, i in zip(ranges, index))
        try:
            F[tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(ix, chunks, F.shape))]
        except Exception:  # noqa: BLE001 - any decoding failure names the chunk
            return ix
    return None


def read_shards(store: Store, regions, visit: Callable | None = None, *, measure: Callable | None = None,
                progress: bool = False, desc: str = "reading F") -> list[tuple[tuple[slice, ...], str]]:
    """Decode every shard region of ``regions`` once, calling ``visit(piece, measure(piece, block))`` on each
    decoded piece (an inner chunk, or a part of the region where zarr reads it; ``measure`` None passes the block);
    returns (region, line) for each shard that does not decode (its key, inner chunk, error). Stores in linterp's
    layout are decoded by ``shard_io`` in ``shard_io.READ_THREADS`` threads, ``measure`` included (it must not
    change shared state), while ``visit`` runs in the calling thread, in order; absent inner chunks (zero) are not
    visited."""
    from .progress import progress as bar

    bad = []
    lay = shard_io.layout(store.F)
    with bar(len(regions), desc, unit="shards", enabled=progress) as tick:
        if lay is not None:
            jobs = [(tuple(s.start // g for s, g in zip(region, lay.shard)), region) for region in regions]
            for (_, region), found in shard_io.decoded(lay, jobs, shard_io.READ_THREADS, measure):
                if isinstance(found, shard_io.ShardReadError):
                    bad.append((region, f"{store.shard_key(region)} does not decode: {found}"))
                elif visit is not None:
                    for piece, result in found:
                        visit(piece, result)
                tick.update()
            return bad
        chunks = store.F.chunks
        for region in regions:
            for piece in _pieces(region, chunks, READ_VALUES):
                try:
                    block = store.F[piece]
                except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise many kinds on damaged data
                    inner = _bad_chunk(store.F, piece)
                    message = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    bad.append((region, f"{store.shard_key(region)} does not decode"
                                + (f" (inner chunk {inner})" if inner is not None else "")
                                + f": {type(err).__name__}: {message}"))
                    break
                if visit is not None:
                    visit(piece, block if measure is None else measure(piece, block))
            tick.update()
    return bad


def ledger_mismatches(store: Store, mode: str, regions) -> dict[tuple[int, ...], str]:
    """Finished tasks whose ledger entry counts another number of shards than are stored: task -> line."""
    ledger = store.ledger[...]
    found = Counter(task_of(store, r, mode) for r in regions)
    lines = {}
    for task in (tuple(int(i) for i in ix) for ix in np.argwhere(ledger >= 2)):
        want, have = int(ledger[task]) - 2, found.get(task, 0)
        capped = ledger[task] == LEDGER_COUNT_MAX
        if (have < want) if capped else (have != want):
            lines[task] = f"task {task} stored {want}{'+' if capped else ''} shards of F, {have} are on disk"
    return lines


def _finished_regions(store: Store, mode: str) -> list[tuple[slice, ...]]:
    """The stored shards of F that belong to finished tasks."""
    done = store.done_tasks()
    return [r for r in store.stored_shards() if task_of(store, r, mode) in done]


def lost_tasks(store: Store) -> dict[tuple[int, ...], str]:
    """Finished tasks with fewer or more shard files than their ledger entry counts: task -> reason. Cheap (it
    lists files, it decodes nothing): the check a rerun of a finished compute makes before it says "done"."""
    mode = store_mode(store)
    return ledger_mismatches(store, mode, _finished_regions(store, mode))


def damaged_tasks(store: Store, *, progress: bool = False) -> dict[tuple[int, ...], str]:
    """Finished tasks whose shards do not decode or are missing: task -> reason. Shards that do not decode
    are deleted, so that the resumed compute that recomputes these tasks rewrites them from scratch."""
    mode = store_mode(store)
    regions = _finished_regions(store, mode)
    damaged = ledger_mismatches(store, mode, regions)
    for region, line in read_shards(store, regions, progress=progress, desc="checking shards"):
        damaged[task_of(store, region, mode)] = line
        (store.path / store.shard_key(region)).unlink(missing_ok=True)
    return damaged


# ---- the checks ------------------------------------------------------------------------------------------

def x0_mismatch(store: Store) -> str | None:
    """A line when the stored x0 is not the input the store was computed from (its sha256 differs from the one
    its ``identity`` records: x0 replaced or damaged), else None (also for stores that record none)."""
    import hashlib

    want = (store.attrs.get("identity") or {}).get("x0_sha256")
    if not isinstance(want, str):
        return None
    got = hashlib.sha256(np.ascontiguousarray(store.x0, dtype=np.float32).tobytes()).hexdigest()
    if got == want:
        return None
    return (f"x0 is not the input the store was computed from (sha256 {got[:12]}…, its identity records "
            f"{want[:12]}…)")


def bounds_check(store: Store, column_max: np.ndarray, column_l1: np.ndarray, inp_done: np.ndarray,
                 tolerances: dict) -> Check:
    """``bounds`` (compact stores): the stored error figures of every finished column are consistent with the
    stored F and with how they were measured (``compact.bound_violations``); the value counts the columns that
    are not. The other checks subtract these bounds, so an inflated one would make them pass on any F.
    ``column_max``, ``column_l1``: max |F̃_j| and ‖F̃_j‖₁ of the stored columns (C_in, H_in, W_in)."""
    from .compact import bound_violations

    attrs = store.attrs
    rules = bound_violations(store.errors(), column_max, column_l1, attrs.get("dtype") or "float32",
                             attrs.get("support_tol"), math.prod(store.out_shape))
    done = np.broadcast_to(inp_done, store.in_shape)
    bad = np.zeros(store.in_shape, bool)
    for mask in rules.values():
        bad |= mask & done
    if not bad.any():
        return _judge("bounds", 0, tolerances, f"{int(done.sum())} columns' error figures fit the stored F")
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    rule = next(name for name, mask in rules.items() if mask[at])
    errors = {name: float(a[at]) for name, a in store.errors().items()}
    return _judge("bounds", int(bad.sum()), tolerances,
                  f"column {at}: {rule} does not fit the stored F (error_max {errors['error_max']:.3g}, error_l1 "
                  f"{errors['error_l1']:.3g}, dropped_l1 {errors['dropped_l1']:.3g}, column_max "
                  f"{errors['column_max']:.3g}; stored column max {column_max[at]:.3g}); "
                  f"the stored error bounds are damaged")


def _relative(a: np.ndarray, ref: np.ndarray, allow=0.0) -> tuple[float, float, tuple]:
    """(max d / max |ref|, max d, index of the largest d), d = |a − ref| beyond ``allow`` (a compact store's
    stored bound of |a − ref|, broadcast against ``a``; 0 for exact stores)."""
    diff = np.maximum(np.abs(np.asarray(a, np.float64) - np.asarray(ref, np.float64)) - allow, 0.0)
    if diff.size == 0:
        return 0.0, 0.0, ()
    where = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(diff[where]) / scale, float(diff[where]), tuple(int(i) for i in where)


def _judge(name: str, value: float, tolerances: dict, detail: str = "") -> Check:
    tol = tolerances[name]
    return Check(name, float(value), tol, bool(value <= tol), detail)


def _skip(name: str, tolerances: dict, why: str) -> Check:
    return Check(name, None, tolerances.get(name), None, why)


def _sample(rng: np.random.Generator, allowed: np.ndarray, extremes: list[tuple], n: int) -> list[tuple]:
    """Up to n distinct positions where the boolean array ``allowed`` holds: the extremes (those allowed)
    first, then seeded random ones."""
    picks = [e for e in dict.fromkeys(extremes) if allowed[e]][:n]
    flat = np.flatnonzero(allowed)
    taken = {int(np.ravel_multi_index(p, allowed.shape)) for p in picks}
    rest = flat[~np.isin(flat, list(taken))] if taken else flat
    if rest.size and len(picks) < n:
        chosen = rng.choice(rest, size=min(n - len(picks), rest.size), replace=False)
        picks += [tuple(int(i) for i in np.unravel_index(int(k), allowed.shape)) for k in chosen]
    return picks


def describe_approximations(approximations: list[dict]) -> str:
    """'18 frozen-statistics (InstanceNorm2d), 1 secant (tanh)': the approximations grouped by kind and op."""
    counts = Counter((a["kind"], a["op"]) for a in approximations)
    kinds: dict[str, list[str]] = {}
    for (kind, op), n in counts.items():
        kinds.setdefault(kind, []).append(f"{op} ×{n}" if n > 1 else op)
    return ", ".join(f"{sum(n for (k, _), n in counts.items() if k == kind)} {kind} ({', '.join(ops)})"
                     for kind, ops in kinds.items())


def _onehots(positions, shape) -> np.ndarray:
    """(n, *shape) float32 with a 1 at each position."""
    v = np.zeros((len(positions),) + tuple(shape), np.float32)
    for i, p in enumerate(positions):
        v[(i,) + tuple(p)] = 1.0
    return v


@dataclass
class _Subject:
    """What the checks compare on: the store, its mode and what its finished tasks computed."""

    store: Store
    mode: str
    inp_done: np.ndarray   # (H_in, W_in) bool
    out_done: np.ndarray   # (C_out, H_out, W_out) bool

    def bound(self, w: np.ndarray) -> float:
        """The stored bound of |F̃w − Fw| (every entry) for one input vector ``w``: 0 for exact stores."""
        if not self.store.compact:
            return 0.0
        return float(np.sum(np.abs(np.asarray(w, np.float64)) * self.store.errors()["error_max"]))

    def transpose_bound(self, u: np.ndarray):
        """The stored bound of |F̃ᵀu − Fᵀu| per input (C_in, H_in, W_in): 0 for exact stores."""
        if not self.store.compact:
            return 0.0
        return self.store.errors()["error_l1"].astype(np.float64) * float(np.abs(u).max())

    def entry_bounds(self, picks) -> np.ndarray | float:
        """The stored bound of every entry of each picked column (n, 1, 1, 1), or of every row entry at each
        input (C_in, H_in, W_in) when ``picks`` is None: 0 for exact stores."""
        if not self.store.compact:
            return 0.0
        errors = self.store.errors()["error_max"].astype(np.float64)
        return errors if picks is None else np.array([errors[p] for p in picks]).reshape(-1, 1, 1, 1)

    def pixels(self) -> np.ndarray:
        """(C_in, H_in, W_in) bool: the finished input pixels (all of them for rows stores)."""
        return np.broadcast_to(self.inp_done, self.store.in_shape)

    def outputs(self) -> np.ndarray:
        """(C_out, H_out, W_out) bool: the finished outputs (all of them for columns stores)."""
        return self.out_done

    def corners_in(self) -> list[tuple]:
        c, h, w = self.store.in_shape
        return [(k, y, x) for k in (0, c - 1) for y in (0, h - 1) for x in (0, w - 1)]

    def corners_out(self) -> list[tuple]:
        c, h, w = self.store.out_shape
        return [(k, y, x) for k in (0, c - 1) for y in (0, h - 1) for x in (0, w - 1)]

    def tile_corners(self) -> list[tuple]:
        """Input pixels at the corners of the compute tiles (where a window's edge is nearest)."""
        c_in, h, w = self.store.in_shape
        ty, tx = (self.store.F.shards or self.store.F.chunks)[4:6]
        return [(c, y, x) for c in range(c_in) for y0 in range(0, h, ty) for x0 in range(0, w, tx)
                for y in (y0, min(y0 + ty, h) - 1) for x in (x0, min(x0 + tx, w) - 1)]

    def columns(self, picks, masked: bool = True) -> np.ndarray:
        """Stored columns (n, C_out, H_out, W_out), on the finished outputs when ``masked``."""
        cols = _read(lambda: np.stack([self.store.column(*p) for p in picks]))
        return cols * self.out_done if masked else cols

    def rows(self, picks) -> np.ndarray:
        """Stored rows (n, C_in, H_in, W_in) on the finished input pixels."""
        return _read(lambda: np.stack([self.store.row(*p) for p in picks])) * self.inp_done


class _Unreadable(Exception):
    """Sampled rows or columns of the stored F that do not decode (one line)."""


def _read(fn):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - zarr/numcodecs raise many kinds on damaged data
        raise _Unreadable(f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}") from None


def _guarded(name: str, tolerances: dict, check: Callable[[], Check]) -> Check:
    """A check, or a failed one when the rows / columns it reads do not decode."""
    try:
        return check()
    except _Unreadable as err:
        return Check(name, None, tolerances.get(name), False, f"the stored F does not decode there ({err})")


def _windowed(store: Store) -> bool:
    """True when the store's columns were computed on windows smaller than the image."""
    radius = store.attrs.get("receptive_radius")
    _, h, w = store.in_shape
    ty, tx = (store.F.shards or store.F.chunks)[4:6]
    return radius is not None and (ty + 2 * radius < h or tx + 2 * radius < w)


def _model_checks(sub: _Subject, model, li, Fv, FTu, v, u, *, samples: int, rng: np.random.Generator,
                  tolerances: dict) -> tuple[list[Check], dict]:
    """The checks that need the model: model, probe, rows (columns), jacobian and windows.

    Network passes are batched, ``PASS_VECTORS`` vectors at a time: forward passes (the probe v and the sampled
    columns), transpose passes (the probe u and the sampled rows) and jvp (vjp) of the original model."""
    store, mode = sub.store, sub.mode
    in_shape, out_shape = store.in_shape, store.out_shape
    net_out = tuple(li.output.shape[1:])
    x0 = li.x0
    checks, figures = [], {}

    def forward(batch: np.ndarray) -> np.ndarray:
        def one(part):
            with torch.no_grad():
                out = li.forward(torch.as_tensor(part, dtype=x0.dtype, device=x0.device))
            return out.float().cpu().numpy().reshape((len(part),) + out_shape)
        return _in_parts(one, batch)

    def transpose(batch: np.ndarray) -> np.ndarray:
        def one(part):
            t = torch.as_tensor(part, dtype=x0.dtype, device=x0.device).reshape((len(part),) + net_out)
            with torch.no_grad():
                return li.transpose(t).float().cpu().numpy().reshape((len(part),) + in_shape)
        return _in_parts(one, batch)

    rel, _, _ = _relative(li.output.float().cpu().numpy().reshape(out_shape), store.y0)
    checks.append(_judge("model", rel, tolerances, "the rebuilt model's f(x0) against the stored y0"))

    windowed = mode == "columns" and _windowed(store)
    if mode == "columns":
        rows = _sample(rng, sub.outputs(), sub.corners_out(), samples)
        tiles = sub.tile_corners()
        cols = _sample(rng, sub.pixels(), sub.corners_in() + [tiles[i] for i in rng.permutation(len(tiles))],
                       samples) if windowed else []
    else:
        rows, cols = [], _sample(rng, sub.pixels(), sub.corners_in(), samples)
    fwd = forward(np.concatenate([(v * sub.inp_done)[None], _onehots(cols, in_shape)]))
    tr = transpose(np.concatenate([(u * sub.out_done)[None], _onehots(rows, out_shape)]))

    rel_f, _, at_f = _relative(Fv, fwd[0] * sub.out_done, sub.bound(v * sub.inp_done))
    rel_t, _, at_t = _relative(FTu, tr[0] * sub.inp_done, sub.transpose_bound(u * sub.out_done))
    checks.append(_judge("probe", max(rel_f, rel_t), tolerances,
                         f"F·v worst at output {at_f}" if rel_f >= rel_t else f"Fᵀ·u worst at input {at_t}"))

    def cross_check() -> Check:
        if mode == "columns":
            rel, worst, at = _relative(sub.rows(rows), tr[1:] * sub.inp_done, sub.entry_bounds(None))
            figures["rows_max_abs"] = worst
            return _judge("rows", rel, tolerances, f"{len(rows)} rows, worst {rows[at[0]]}")
        rel, worst, at = _relative(sub.columns(cols), fwd[1:] * sub.out_done)
        figures["rows_max_abs"] = worst
        return _judge("columns", rel, tolerances, f"{len(cols)} columns, worst {cols[at[0]]}")

    def windows_check() -> Check:
        stored = sub.columns(cols, masked=False)
        rel, _, at = _relative(stored, fwd[1:], sub.entry_bounds(cols))
        detail = f"{len(cols)} columns"
        if rel > 0:
            detail += f", worst {cols[at[0]]} at output {at[1:]}"
            if stored[at] == 0:
                detail += ", where the stored column is zero: truncated by its window"
        return _judge("windows", rel, tolerances, detail)

    checks.append(_guarded("columns" if mode == "rows" else "rows", tolerances, cross_check))
    if li.jacobian_exact:
        checks.append(_guarded("jacobian", tolerances, lambda: _jacobian_check(
            sub, model, x0, Fv, FTu, v, u, samples=samples, rng=rng, tolerances=tolerances)))
    else:
        checks.append(_skip("jacobian", tolerances, "skipped: F is a linear interpreter, not the Jacobian: "
                            + describe_approximations(li.approximations)))
    if windowed:
        checks.append(_guarded("windows", tolerances, windows_check))
    else:
        checks.append(_skip("windows", tolerances, "skipped: every column was computed on the whole image"))
    return checks, figures


def _jacobian_check(sub: _Subject, model, x0, Fv, FTu, v, u, *, samples, rng, tolerances) -> Check:
    """The Jacobian J of the original model at x0 against the stored F: J·v (for the probe v, against the
    stored F·v) and sampled columns, by ``torch.func.jvp``; for rows stores Jᵀ·u and sampled rows, by
    ``torch.func.vjp``. ``samples // 2`` + 1 vectors (vmap, ``PASS_VECTORS`` at a time), float32."""
    store = sub.store
    n = max(1, samples // 2)
    if sub.mode == "columns":
        picks = _sample(rng, sub.pixels(), sub.corners_in(), n)
        tangents = np.concatenate([(v * sub.inp_done)[None], _onehots(picks, store.in_shape)])
        t = torch.as_tensor(tangents, dtype=x0.dtype, device=x0.device)[:, None]  # (n + 1, 1, C, H, W)
        ref = _batched(lambda d: torch.func.jvp(model, (x0,), (d,))[1], t, store.out_shape)
        stored = np.concatenate([Fv[None], sub.columns(picks)])
        allow = np.concatenate([np.full((1, 1, 1, 1), sub.bound(v * sub.inp_done)), sub.entry_bounds(picks)]) \
            if store.compact else 0.0
        what = "column"
    else:
        picks = _sample(rng, sub.outputs(), sub.corners_out(), n)
        with torch.enable_grad():
            y, pull = torch.func.vjp(model, x0)
        cots = np.concatenate([(u * sub.out_done)[None], _onehots(picks, store.out_shape)])
        c = torch.as_tensor(cots, dtype=y.dtype, device=y.device).reshape((len(cots),) + tuple(y.shape))
        ref = _batched(lambda d: pull(d)[0], c, store.in_shape) * sub.inp_done
        stored = np.concatenate([FTu[None], sub.rows(picks)])
        allow = 0.0  # rows stores are never compact
        what = "row"
    rel, _, at = _relative(stored, ref, allow)
    return _judge("jacobian", rel, tolerances, f"the random probe and {len(picks)} {what}s, worst "
                  + (f"{what} {picks[at[0] - 1]}" if at[0] else "the random probe"))


def _in_parts(fn, batch):
    """fn (a batch -> an array with one entry per vector) applied ``PASS_VECTORS`` vectors at a time, joined."""
    return np.concatenate([fn(batch[i:i + PASS_VECTORS]) for i in range(0, len(batch), PASS_VECTORS)])


def _batched(fn, vectors: torch.Tensor, shape) -> np.ndarray:
    """fn applied to each of ``vectors`` (vmap over ``PASS_VECTORS`` at a time, or one by one where the model
    does not vmap): (n, *shape)."""
    import warnings

    def part(vs: torch.Tensor) -> np.ndarray:
        try:
            out = torch.func.vmap(fn)(vs)
        except Exception:  # noqa: BLE001 - in-place or data-dependent code that vmap cannot batch
            out = torch.stack([fn(t) for t in vs])
        return out.detach().float().cpu().numpy().reshape((len(vs),) + tuple(shape))

    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return _in_parts(part, vectors)


def verify_store(store: Store, build: Callable[[], torch.nn.Module] | None = None, *,
                 samples: int = DEFAULT_SAMPLES, seed: int = 0, tolerances: dict | None = None,
                 device="cpu", weights=None, model=None, trust_pickle: bool = False,
                 progress: bool = False) -> Report:
    """Run every check on ``store`` (finished or not: an unfinished store is checked on its finished tasks).

    ``build``: a zero-argument callable returning the model (compute passes its own); None rebuilds it from
    the store's attributes (model name, weights name and sha256, found as `sources.model_from_store` finds
    them; ``weights``: the file, when it is not found there; ``model``: where a user model's file is now, or the
    module object, see ``model_from_store``). A fresh interpreter is built from it, never
    a cached one. ``samples``: rows/columns per sampled check; ``tolerances``: overrides of ``TOLERANCES``.
    ``device``: where the fresh interpreter runs ("cpu", "cuda", "cuda:N", "auto" or a ``torch.device``, see
    ``pipeline.compute.resolve_device``).
    """
    from .compute import resolve_device

    device = resolve_device(device)
    started = time.perf_counter()
    tolerances = dict(TOLERANCES, **(tolerances or {}))
    rng = np.random.default_rng(seed)
    mode = store_mode(store)
    ledger = store.ledger[...]
    done = ledger >= 1
    finished = bool(done.all())
    inp_done, out_done = done_masks(store, mode, done)
    done_set = {tuple(int(i) for i in ix) for ix in np.argwhere(done)}
    regions = [r for r in store.stored_shards() if task_of(store, r, mode) in done_set]

    x0 = store.x0
    v = rng.standard_normal(store.in_shape).astype(np.float32)
    u = rng.standard_normal(store.out_shape).astype(np.float32)
    both = np.stack([x0, v], axis=-1)  # F·x0 and F·v in one product
    Fx0v = np.zeros(store.out_shape + (2,), np.float64)
    FTu = np.zeros(store.in_shape, np.float64)

    compact = store.compact
    column_max = np.zeros(store.in_shape, np.float64)  # max |F̃_j| and ‖F̃_j‖₁ of the stored columns (compact stores)
    column_l1 = np.zeros(store.in_shape, np.float64)

    def products(piece, block):  # in the reading threads
        out, inp = piece[:3], piece[3:]
        found = np.tensordot(block, both[inp], axes=3), np.tensordot(u[out], block, axes=([0, 1, 2], [0, 1, 2]))
        if not compact:
            return found
        size = np.abs(block)
        return found + (size.max(axis=(0, 1, 2)), size.sum(axis=(0, 1, 2), dtype=np.float64))

    def add(piece, result):  # in order: the sums do not depend on the threads
        Fx0v[piece[:3]] += result[0]
        FTu[piece[3:]] += result[1]
        if compact:
            np.maximum(column_max[piece[3:]], result[2], out=column_max[piece[3:]])
            column_l1[piece[3:]] += result[3]

    bad = [line for _, line in read_shards(store, regions, add, measure=products, progress=progress,
                                           desc=f"verify {store.path.name}")]
    phases = {"read_s": time.perf_counter() - started}
    bad += list(ledger_mismatches(store, mode, regions).values())
    bad += [line] if (line := x0_mismatch(store)) else []
    checks = [Check("integrity", float(len(bad)), 0, not bad,
                    bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") if bad
                    else f"{len(regions)} {counted(len(regions), 'shards')} decode{'s' if len(regions) == 1 else ''}")]
    figures = {"mode": mode, "samples": samples, "seed": seed, "tasks": int(done.size),
               "tasks_done": int(done.sum())}

    if compact:
        from .compact import error_summary

        figures["compact"] = error_summary(store)
        checks.append(bounds_check(store, column_max, column_l1, inp_done, tolerances))
    if finished:
        fx0, residual, y0 = Fx0v[..., 0], store.residual, store.y0
        err = float(np.abs(fx0 + residual - y0).max())
        allow = _Subject(store, mode, inp_done, out_done).bound(x0)  # a compact store's stored bound; else 0
        # relative to the largest term of the sum: float32 rounding of F·x0 and r scales with them, and they can
        # be far larger than y0 and cancel (instance norms of a flat crop: |F·x0| ≈ |r| ≈ 450, |y0| ≤ 1)
        terms = max(float(np.abs(y0).max()), float(np.abs(fx0).max()), float(np.abs(residual).max()))
        rel = max(err - allow, 0.0) / max(terms, 1e-30)
        checks.append(_judge("reconstruction", rel, tolerances, "F·x0 + r against y0, F·x0 from the stored F"))
        figures.update(reconstruction_max_abs=err, reconstruction_rel=rel)
    else:
        checks.append(_skip("reconstruction", tolerances,
                            f"skipped: unfinished store ({int(done.sum())} of {done.size} tasks)"))

    try:
        mark = time.perf_counter()
        model, li = _fresh(store, build, device, weights, model, trust_pickle)
        phases["interpret_s"] = time.perf_counter() - mark
    except Exception as err:  # noqa: BLE001 - weights gone, changed, unsupported: the checks cannot run
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        for name in ("model", "probe", "columns" if mode == "rows" else "rows", "jacobian", "windows"):
            checks.append(_skip(name, tolerances, f"not run: {reason}"))
    else:
        sub = _Subject(store, mode, inp_done, out_done)
        more, extra = _model_checks(sub, model, li, Fx0v[..., 1], FTu, v, u, samples=samples, rng=rng,
                                    tolerances=tolerances)
        checks += more
        figures.update(extra, jacobian_exact=li.jacobian_exact)
        phases["passes_s"] = time.perf_counter() - mark - phases["interpret_s"]

    report = Report("passed", checks, figures)
    if report.failed:
        report.status = "failed"
    elif report.not_run or not finished:
        report.status = "unverified"
    figures.update(seconds=time.perf_counter() - started, phases=phases)
    return report


def _fresh(store: Store, build, device: str, weights, model, trust_pickle: bool):
    """(model, interpreter) built anew from ``build`` or from the store's attributes, at the store's x0."""
    from .compute import full_precision
    from .interpreter import interpret

    full_precision(device)
    if build is None:
        from .sources import model_from_store

        model = model_from_store(store, trust_pickle, weights, model)
    else:
        model = build()
    model = model.eval().to(device)
    x0 = torch.as_tensor(store.x0, device=device)[None]
    with torch.no_grad():
        li = interpret(model, x0)
    return model, li


# ---- compute's gate and the store's attributes ----------------------------------------------------------

def status(store: Store) -> str:
    """The store's verification status: "passed", "failed" or "unverified" (never verified)."""
    found = (store.attrs.get("verification") or {}).get("status")
    return found if found in ("passed", "failed") else "unverified"


def record(store: Store, report: Report) -> None:
    """Write a report into the store: ``verification``, and ``complete`` = finished and passed."""
    store.update_attrs(verification=report.as_attr(), complete=report.status == "passed")


def failure_line(store: Store, report: Report) -> str:
    """One line saying why a store is not verified."""
    if report.failed:
        what = "; ".join(c.line() for c in report.failed)
    elif report.not_run:
        what = report.not_run[0].line()
    else:
        what = next(c.line() for c in report.checks if c.name == "reconstruction")
    return f"{store.path}: verification {report.status}: {what}"


def gate(store: Store, build: Callable[[], torch.nn.Module], *, device: str = "cpu",
         samples: int = DEFAULT_SAMPLES, progress: bool = False) -> Report:
    """Compute's last step: verify the store against a freshly built interpreter of ``build()``, record the
    result (``complete`` only when it passed) and raise ``VerificationError`` (one line) when it did not."""
    report = verify_store(store, build, samples=samples, device=device, progress=progress)
    record(store, report)
    if report.status != "passed":
        raise VerificationError(failure_line(store, report) + " (the store is marked failed; see `linterp verify`)")
    return report


def require_intact(store: Store) -> None:
    """Refuse (``StoreError``, one line) a store that has lost or gained shard files since its tasks finished
    (a lost shard would read as zeros): the cheap file count of ``lost_tasks``, before F is read."""
    from .store import StoreError

    if lost := lost_tasks(store):
        line = next(iter(lost.values()))
        raise StoreError(f"{store.path}: {len(lost)} finished {'task has' if len(lost) == 1 else 'tasks have'} "
                         f"lost shards of F since ({line}); rerun `linterp compute` with the same arguments")


def open_complete(path, mode: str = "r") -> Store:
    """A store that finished, passed its verification and has every shard it finished with (``StoreError``,
    one line, otherwise): what the readers of a whole store (geometry, video) start from."""
    from .store import open_store

    store = open_store(path, mode=mode, require_complete=True)
    require_intact(store)
    return store


def require_exportable(store: Store, allow_unverified: bool = False) -> None:
    """Refuse (``StoreError``, one line) an unfinished store or one that has lost shards, and a failed or
    unverified one unless ``allow_unverified``."""
    from .store import StoreError

    if not (store.complete or store.finished):  # complete implies finished
        raise StoreError(f"{store.path}: the store is incomplete (rerun `linterp compute` with the same arguments)")
    require_intact(store)
    state = status(store)
    if state != "passed" and not allow_unverified:
        checks = (store.attrs.get("verification") or {}).get("checks") or []
        failed = [c["name"] for c in checks if c.get("passed") is False]
        why = f" ({', '.join(failed)} failed)" if failed else ""
        raise StoreError(f"{store.path}: verification {state}{why}; check it with `linterp verify`, or pass "
                         f"--allow-unverified to export it with a warning")
