"""Compact stores (opt-in): F kept in a lower precision and/or on a truncated support, with the error of every
column measured when it is written, so that every row and column read back carries a bound.

Two options (``Compaction``), both off by default (F exact in float32, losslessly compressed):

- ``dtype``: "float16" stores F as zarr's float16 (half the bytes before compression; F must stay within
  float16's range, ±65504); "bfloat16" stores bfloat16 values (8 significant bits) in a float32 array whose low
  16 bits are zero, compressed by blosc with bit shuffling (zarr v3 has no bfloat16 type: this keeps the store
  readable as float32 by every zarr reader, at about the size of a bfloat16 array). Each column j is rounded
  to one grid (``column_grid``): multiples of q_j = 2^e_j·u, where 2^(e_j−1) ≤ max|F_j| < 2^e_j and u is the
  precision's unit roundoff (2^-11, 2^-8). Every grid value is exact in the precision, and every entry is within
  q_j/2 ≤ u·max|F_j| of F: the bound that rounding to nearest gives the column's largest entry. Entries much
  smaller than the column's largest lose the low bits that rounding to nearest would keep for them (bits below
  the bound), which is what makes them compress: 4.1× smaller than rounding to nearest on an edsr-small-x4
  tile, same bound. (Except below float16's normal range, max|F_j| < 2^-14: the grid is finer than float16's
  subnormal spacing 2^-24 and the values are rounded again, within u·max|F_j| + 2^-25; error_max measures it.)
- ``support_tol`` T: per column, the smallest window around its pixel that holds all but a fraction T of the
  column's L1 mass is kept and the entries outside it are set to zero. The window of input pixel (y, x) is the
  output block of that pixel, [⌊y·s_y⌋, ⌈(y+1)·s_y⌉) × [⌊x·s_x⌋, ⌈(x+1)·s_x⌉) with s = output / input size,
  grown by a radius ρ ≥ 0 (output pixels, all channels), clipped to the output.

Per-column figures (arrays over the input pixels, shape (C_in, H_in, W_in), dimension names c_in, y_in,
x_in), written next to F by every compute task for its own input tile:

==================  =========  ================================================================================
array               dtype      meaning (column j = F[..., c, y, x], F the float32 F the network computed)
==================  =========  ================================================================================
``dropped_l1``      float32    L1 mass of the entries the support window dropped (0 without ``support_tol``)
``error_l1``        float32    ‖F̃_j − F_j‖₁, F̃ the stored column: dropped mass plus rounding, rounded up
``error_max``       float32    ‖F̃_j − F_j‖_∞, rounded up: every entry read back is within this of F
``column_max``      float32    ‖F_j‖_∞, the column's largest magnitude (the scale of its error)
``support_radius``  int32      ρ of the kept window (the radius that holds all of the column without T)
==================  =========  ================================================================================

So for any vector w: |F̃w − Fw| ≤ Σ_j |w_j|·error_max_j entrywise, and |F̃ᵀu − Fᵀu|_j ≤ error_l1_j·max|u|; a row
read back is within max_j error_max_j of the exact row entry by entry. Every figure is measured in float64
from the float32 F before it is discarded (the difference of a float32 value and its float16 / bfloat16
rounding is exact in float32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# the per-column error arrays of a compact store, as above, and the precisions of F (``StoreAttrs.dtype``)
from .store import ERROR_ARRAYS, F_DTYPES as DTYPES
#: Half the spacing of representable numbers relative to a value (round to nearest): the relative rounding
#: error of each precision for normal numbers.
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
FLOAT16_MAX = float(np.finfo(np.float16).max)


class CompactionError(ValueError):
    """F cannot be stored as asked (e.g. beyond float16's range), or the options are not valid (one line)."""


@dataclass(frozen=True)
class Compaction:
    """How F is stored: ``dtype`` (one of ``DTYPES``) and ``support_tol`` (None, or a fraction in [0, 1))."""

    dtype: str = "float32"
    support_tol: float | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise CompactionError(f"unknown dtype {self.dtype!r} for F ({', '.join(DTYPES)})")
        if self.support_tol is not None:
            tol = float(self.support_tol)
            if not (0.0 <= tol < 1.0) or math.isnan(tol):
                raise CompactionError(f"--support-tol must be a fraction in [0, 1), not {self.support_tol!r}")
            object.__setattr__(self, "support_tol", tol)

    @property
    def active(self) -> bool:
        """False for the default (exact float32): no rounding, no truncation, no error arrays."""
        return self.dtype != "float32" or self.support_tol is not None


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``values`` rounded to ``dtype`` (nearest, ties to even), in the dtype F is stored in: float16 for
    "float16", float32 (low 16 bits zero) for "bfloat16" and "float32" (unchanged). ``CompactionError`` where a
    value does not fit (float16 beyond ±65504)."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "float32":
        return values
    if dtype == "float16":
        peak = float(np.abs(values).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise CompactionError(f"F has entries of magnitude {peak:.4g}, beyond float16's range "
                                  f"(±{FLOAT16_MAX:g}): use --dtype bfloat16 or float32")
        return values.astype(np.float16)
    if dtype == "bfloat16":
        bits = values.view(np.uint32)
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) & np.uint32(0xFFFF0000)
        return rounded.view(np.float32)
    raise CompactionError(f"unknown dtype {dtype!r} for F ({', '.join(DTYPES)})")


def column_grid(column_max: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing q of each column's grid for ``dtype`` (float16 or bfloat16): 2^e·u, 2^(e−1) ≤ ``column_max`` <
    2^e, u = ``UNIT_ROUNDOFF[dtype]``. Multiples k·q with |k| ≤ 1/u cover the column and are exact in ``dtype``;
    rounding to them errs by at most q/2 ≤ u·column_max. float32 ``column_max`` of any shape -> float32, same
    shape (1 where a column is all zero)."""
    _, exponent = np.frexp(np.asarray(column_max, dtype=np.float32))
    grid = np.ldexp(np.float32(UNIT_ROUNDOFF[dtype]), exponent).astype(np.float32)
    return np.where(np.asarray(column_max) > 0, grid, np.float32(1))


def pixel_blocks(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) of the output block of each input pixel along one axis: [⌊i·s⌋, ⌈(i+1)·s⌉), s = n_out / n_in."""
    i = np.arange(n_in)
    return (i * n_out) // n_in, -((-(i + 1) * n_out) // n_in)


def _distances(start: int, n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n, len(lo)) int: distance of output pixel start + k from the block [lo_i, hi_i) (0 inside it)."""
    pos = np.arange(start, start + n)[:, None]
    return np.maximum(0, np.maximum(lo[None] - pos, pos - (hi[None] - 1)))


def support_radii(mass: np.ndarray, dy: np.ndarray, dx: np.ndarray, tol: float) -> np.ndarray:
    """The kept radius of each column: the smallest ρ whose window holds all but ``tol`` of the column's mass.

    ``mass``: (R_h, R_w, n) float64, the L1 mass (summed over output channels) of n columns over an output
    region; ``dy`` (R_h, n), ``dx`` (R_w, n): distances of the region's rows / columns from each column's block.
    Returns (n,) int64. Summed-area tables give the mass inside every window at once.
    """
    r_h, r_w, n = mass.shape
    table = np.zeros((r_h + 1, r_w + 1, n))
    np.cumsum(np.cumsum(mass, axis=0), axis=1, out=table[1:, 1:])
    total = table[-1, -1]
    # the block of each column inside the region (its rows / columns at distance 0), as index ranges
    rows_in, cols_in = dy == 0, dx == 0
    y0 = np.where(rows_in.any(0), rows_in.argmax(0), 0)
    y1 = np.where(rows_in.any(0), r_h - rows_in[::-1].argmax(0), 0)
    x0 = np.where(cols_in.any(0), cols_in.argmax(0), 0)
    x1 = np.where(cols_in.any(0), r_w - cols_in[::-1].argmax(0), 0)
    limit = int(max(dy.max(initial=0), dx.max(initial=0)))
    radii = np.full(n, limit, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    cols = np.arange(n)
    for rho in range(limit + 1):
        a, b = np.clip(y0 - rho, 0, r_h), np.clip(y1 + rho, 0, r_h)
        c, d = np.clip(x0 - rho, 0, r_w), np.clip(x1 + rho, 0, r_w)
        inside = table[b, d, cols] - table[a, d, cols] - table[b, c, cols] + table[a, c, cols]
        done = open_ & (total - inside <= tol * total)
        radii[done] = rho
        open_ &= ~done
        if not open_.any():
            break
    return radii


def compact_block(block: np.ndarray, region: tuple[int, int, int, int], box: tuple[int, int, int, int],
                  in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                  compaction: Compaction) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Truncate and round the columns of one input tile; returns (stored block, figures).

    ``block`` float32 (C_out, R_h, R_w, C_in, h, w): the columns of the input tile ``box`` = (top, left, h, w)
    over the output ``region`` = (top, left, R_h, R_w), holding every non-zero of these columns (as
    ``pipeline.compute.tile_columns`` returns them). The stored block has F's storage dtype (see ``round_to``);
    figures: the ``ERROR_ARRAYS`` of these columns, each of shape (C_in, h, w).
    """
    c_out, r_h, r_w, c_in, h, w = block.shape
    top, left = box[:2]
    (r_top, r_left), (_, h_in, w_in), (_, h_out, w_out) = region[:2], in_shape, out_shape
    lo_y, hi_y = (a[top:top + h] for a in pixel_blocks(h_in, h_out))
    lo_x, hi_x = (a[left:left + w] for a in pixel_blocks(w_in, w_out))
    dy = _distances(r_top, r_h, lo_y, hi_y)      # (R_h, h)
    dx = _distances(r_left, r_w, lo_x, hi_x)     # (R_w, w)
    # distances per column of one input channel, in the block's (y, x) column order
    dyc = np.broadcast_to(dy[:, :, None], (r_h, h, w)).reshape(r_h, -1)
    dxc = np.broadcast_to(dx[:, None, :], (r_w, h, w)).reshape(r_w, -1)
    tol = compaction.support_tol
    stored = np.empty(block.shape, dtype=round_to(block[:0], compaction.dtype).dtype)
    figures = {name: np.zeros((c_in, h, w)) for name in ("dropped_l1", "error_l1", "error_max", "column_max")}
    figures["support_radius"] = np.zeros((c_in, h, w), dtype=np.int32)
    for c in range(c_in):  # one input channel's columns at a time: temporaries a fraction C_in of the block
        part = block[..., c, :, :]  # (C_out, R_h, R_w, h, w)
        mass = np.abs(part).sum(axis=0, dtype=np.float64).reshape(r_h, r_w, h * w)
        radii = support_radii(mass, dyc, dxc, 0.0 if tol is None else tol).reshape(h, w)
        kept = part
        if tol is not None:
            # outside[oy, ox, y, x]: the entry lies outside the kept window of column (c, y, x)
            outside = np.maximum(dy[:, None, :, None], dx[None, :, None, :]) > radii[None, None]
            figures["dropped_l1"][c] = (mass.reshape(r_h, r_w, h, w) * outside).sum(axis=(0, 1))
            kept = np.where(outside[None], np.float32(0), part)
        column_max = np.abs(part).max(axis=(0, 1, 2), initial=0.0)
        if compaction.dtype != "float32":  # onto the column's grid (exact: q is a power of two), in place
            grid = column_grid(column_max, compaction.dtype)
            kept = np.divide(kept, grid, out=None if kept is part else kept)  # ``part`` is needed for the errors
            np.multiply(np.round(kept, out=kept), grid, out=kept)
            kept += np.float32(0)  # −0.0 (small negatives rounded away) -> +0.0: zarr skips only +0 chunks
        stored[..., c, :, :] = round_to(kept, compaction.dtype)
        error = stored[..., c, :, :].astype(np.float32)
        error -= part  # exact in float32 (dropped entries and rounding residues)
        np.abs(error, out=error)
        figures["error_l1"][c] = error.sum(axis=(0, 1, 2), dtype=np.float64)
        figures["error_max"][c] = error.max(axis=(0, 1, 2), initial=0.0)
        figures["column_max"][c] = column_max
        figures["support_radius"][c] = radii
    figures["column_max"] = figures["column_max"].astype(np.float32)
    for name in ("dropped_l1", "error_l1", "error_max"):
        figures[name] = round_up(figures[name])
    return stored, figures


def round_up(values: np.ndarray) -> np.ndarray:
    """float64 -> the nearest float32 at or above each value (so that a stored bound stays a bound)."""
    values = np.asarray(values, dtype=np.float64)
    down = values.astype(np.float32)
    return np.where(down.astype(np.float64) < values, np.nextafter(down, np.float32(np.inf)), down)


def relative_bound(errors: dict[str, np.ndarray]) -> np.ndarray:
    """error_max / column_max per column (C_in, H_in, W_in): the bound of every entry of a column as a fraction
    of the column's largest entry (0 for all-zero columns, whose stored error is 0 too)."""
    scale = errors["column_max"].astype(np.float64)
    return np.where(scale > 0, errors["error_max"] / np.where(scale > 0, scale, 1.0), errors["error_max"])


def error_summary(store) -> dict:
    """The figures of a compact store's error arrays: the largest ``error_max`` (absolute), ``bound_rel`` (the
    largest ``relative_bound``), the largest ``dropped_l1`` and ``error_l1``, the range of ``support_radius``."""
    errors = store.errors()
    radius = errors["support_radius"]
    return {"error_max": float(errors["error_max"].max()), "bound_rel": float(relative_bound(errors).max()),
            "dropped_l1": float(errors["dropped_l1"].max()), "error_l1": float(errors["error_l1"].max()),
            "radius_min": int(radius.min()), "radius_max": int(radius.max())}


def summary_line(store) -> str:
    """One line on a compact store: its precision, tolerance and stored error figures (``error_summary``)."""
    s = error_summary(store)
    attrs = store.attrs
    return (f"compact store ({attrs.dtype}, support tol {attrs.support_tol}): every entry within {s['error_max']:.3g} "
            f"of the exact F, at most {s['bound_rel']:.3g} of its column's largest entry; dropped L1 mass up to "
            f"{s['dropped_l1']:.3g}; kept radius {s['radius_min']}–{s['radius_max']} output pixels")


#: Half the smallest subnormal number of each precision: the absolute error of rounding a value below the
#: precision's normal range (float16: 2^-14 ≈ 6.1e-5), where a column's grid is finer than the precision.
SUBNORMAL_HALF = {"float32": 2.0 ** -150, "float16": 2.0 ** -25, "bfloat16": 2.0 ** -134}
#: Relative slack of ``bound_violations`` for the float32 / float64 rounding of the figures and the sums.
BOUND_SLACK = 1e-5


def bound_violations(errors: dict[str, np.ndarray], stored_max: np.ndarray, stored_l1: np.ndarray, dtype: str,
                     support_tol: float | None, outputs: int) -> dict[str, np.ndarray]:
    """The columns whose stored error figures cannot hold for the stored F, by rule: rule -> bool (C_in, H_in,
    W_in). Verification subtracts these bounds from every difference it measures, so an inflated bound (a damaged
    array, a store edited by hand) would make every check pass; these rules follow from how ``compact_block``
    measures the figures and catch that.

    ``errors``: the store's arrays (``ERROR_ARRAYS``); ``stored_max``, ``stored_l1``: max |F̃_j| and ‖F̃_j‖₁ of the
    stored columns; ``outputs``: the entries of a column (C_out·H_out·W_out). Rules (s = ``BOUND_SLACK``):

    - ``finite``: every figure is finite and ≥ 0;
    - ``column_max``: |max |F̃_j| − column_max_j| ≤ error_max_j (each entry is within error_max_j of F_j);
    - ``error_max``: error_max_j ≤ max(u·column_max_j + h, min(dropped_l1_j, column_max_j)): an entry errs by
      its rounding (u the unit roundoff, h = ``SUBNORMAL_HALF``, 0 for float32) or is a dropped entry;
    - ``dropped_l1``: dropped_l1_j ≤ T·(‖F̃_j‖₁ + error_l1_j), T the support tolerance (0 without), since
      ‖F_j‖₁ ≤ ‖F̃_j‖₁ + error_l1_j;
    - ``error_l1``: dropped_l1_j ≤ error_l1_j ≤ dropped_l1_j + outputs·(u·column_max_j + h).
    """
    f = {name: np.asarray(errors[name], dtype=np.float64) for name in ERROR_ARRAYS}
    u = 0.0 if dtype == "float32" else UNIT_ROUNDOFF[dtype]
    half = 0.0 if dtype == "float32" else SUBNORMAL_HALF[dtype]
    up, down = 1 + BOUND_SLACK, 1 - BOUND_SLACK
    tiny = np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.all([np.isfinite(a) & (a >= 0) for a in f.values()], axis=0)
        rounding = u * f["column_max"] + half
        rules = {
            "finite": ~finite,
            "column_max": np.abs(stored_max - f["column_max"])
            > f["error_max"] + BOUND_SLACK * f["column_max"] + tiny,
            "error_max": f["error_max"]
            > np.maximum(rounding, np.minimum(f["dropped_l1"], f["column_max"])) * up + tiny,
            "dropped_l1": f["dropped_l1"] > (support_tol or 0.0) * (stored_l1 + f["error_l1"]) * up + tiny,
            "error_l1": (f["error_l1"] < f["dropped_l1"] * down - tiny)
            | (f["error_l1"] > (f["dropped_l1"] + outputs * rounding) * up + tiny),
        }
    return {name: mask & finite if name != "finite" else mask for name, mask in rules.items()}
