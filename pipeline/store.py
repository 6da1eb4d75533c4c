"""The Zarr layout of a linterp store: the one place that knows it.

A store is a Zarr v3 group per (model, image, crop):

=============  ===============================================  ============================================
path           shape                                            meaning
=============  ===============================================  ============================================
``x0``         (C_in, H_in, W_in)                               the input x0, float32, model input units
``y0``         (C_out, H_out, W_out)                            f(x0)
``residual``   (C_out, H_out, W_out)                            r(x0) = f(x0) - F x0
``F``          (C_out, H_out, W_out, C_in, H_in, W_in)          the filter matrix F(x0): row ``F[c, y, x]``,
                                                                column ``F[..., c, y, x]``
``ledger``     (task grid)                                      uint8, 1 where a compute task has finished
``svd/S``      (k,)                                             singular values, descending
``svd/U``      (k, C_out, H_out, W_out)                         eigen-outputs (left singular vectors)
``svd/V``      (k, C_in, H_in, W_in)                            eigen-inputs (right singular vectors)
``svd/residuals`` (k,)                                          relative residuals of the pairs
=============  ===============================================  ============================================

Networks whose output is a vector (classifiers, shape (N,)) are stored with output shape (N, 1, 1).

``F`` is float32, zstd-compressed, sharded: one shard per (output tile, input tile) pair, which is exactly the
region one compute task writes, so no two tasks ever touch the same file. Inside a shard the inner chunks are
small spatial tiles in both domains; chunks that are all zero are not stored (fill value 0). Every array has
``dimension_names`` so that xarray, dask and napari read the store as it is.

Group attributes: ``format_version``, ``identity`` (the keys that must match for a compute run to resume into
an existing store: model, weights sha256, image sha256, crop, tile, mode, shapes), ``model``, ``weights``,
``weights_sha256``, ``image``, ``image_sha256``, ``crop``, ``scale``, ``tile``, ``mode``, ``verification``,
``timings``, ``versions`` and ``complete``.
"""
from __future__ import annotations

import json
import math
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

#: Version of the layout described above; stores of another version are refused.
FORMAT_VERSION = 1

IN_DIMS = ("c_in", "y_in", "x_in")
OUT_DIMS = ("c_out", "y_out", "x_out")
F_DIMS = OUT_DIMS + IN_DIMS
_CODEC = ZstdCodec(level=3, checksum=True)  # a damaged chunk fails to decode instead of reading as noise
_CONFIG = {"write_empty_chunks": False}
#: Largest ledger value (uint8): a task that stored 253 or more shards.
LEDGER_COUNT_MAX = 255
#: Most values in one inner chunk of F (64 Ki float32 = 256 KiB before compression).
INNER_VALUES = 2**16


class StoreError(ValueError):
    """A store that is missing, corrupt, foreign, incomplete or made from other inputs (one-line message)."""


def _as_chw(a: np.ndarray) -> np.ndarray:
    """(C,H,W), (1,C,H,W), (N,) or (1,N) -> float32 (C,H,W); a vector of N values becomes (N,1,1)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim in (2, 4) and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 1:
        a = a[:, None, None]
    if a.ndim != 3:
        raise ValueError(f"expected an array of shape (C,H,W) or (N,), got {a.shape}")
    return a


class Store:
    """An opened linterp store (see the module docstring for the layout).

    Arrays are float32; ``F`` is the lazily read zarr array, the others are read once into numpy.
    """

    def __init__(self, group: zarr.Group, path: Path):
        self.group = group
        self.path = path

    def __repr__(self):
        return f"Store({str(self.path)!r}, F{tuple(self.F.shape)}, complete={self.complete})"

    # ---- attributes -------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """The group attributes as a plain dict (a fresh copy on each access)."""
        return dict(self.group.attrs)

    def update_attrs(self, **values) -> None:
        """Set group attributes (JSON-serialisable values)."""
        self.group.attrs.update(values)

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    # ---- arrays -----------------------------------------------------------------------------------
    @cached_property
    def x0(self) -> np.ndarray:
        """(C_in, H_in, W_in) float32."""
        return self.group["x0"][...]

    @cached_property
    def y0(self) -> np.ndarray:
        """(C_out, H_out, W_out) float32."""
        return self.group["y0"][...]

    @cached_property
    def residual(self) -> np.ndarray:
        """(C_out, H_out, W_out) float32."""
        return self.group["residual"][...]

    @cached_property
    def F(self) -> zarr.Array:
        """The zarr array (C_out, H_out, W_out, C_in, H_in, W_in); reads aligned to ``F.chunks`` are fast."""
        return self.group["F"]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.F.shape[3:])

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(self.F.shape[:3])

    def stored_shards(self) -> list[tuple[slice, ...]]:
        """The regions of F (6-tuples of slices) of the shards written to disk; the rest of F is zero.

        Files that are not chunk keys (``.DS_Store``, ``*.partial`` files of a killed writer) are ignored."""
        grid = self.F.shards or self.F.chunks
        found = []
        root = self.path / "F" / "c"
        for folder, _, files in os.walk(root):
            prefix = Path(folder).relative_to(root).parts
            for name in files:
                parts = prefix + (name,)
                if len(parts) != len(grid) or not all(p.isdigit() and p.isascii() for p in parts):
                    continue
                index = tuple(int(i) for i in parts)
                if all(i * g < n for i, g, n in zip(index, grid, self.F.shape)):
                    found.append(tuple(slice(i * g, min((i + 1) * g, n))
                                       for i, g, n in zip(index, grid, self.F.shape)))
        return sorted(found, key=lambda sl: tuple(s.start for s in sl))

    def shard_key(self, region: tuple[slice, ...]) -> str:
        """The storage key of the shard of F holding ``region`` (e.g. ``F/c/0/1/1/0/0/0``)."""
        grid = self.F.shards or self.F.chunks
        return "F/c/" + "/".join(str(s.start // g) for s, g in zip(region, grid))

    def column(self, c: int, y: int, x: int) -> np.ndarray:
        """Column ``F[..., c, y, x]``: the response to a unit impulse at input (c, y, x); (C_out, H_out, W_out)."""
        return self.F[:, :, :, c, y, x]

    def row(self, c: int, y: int, x: int) -> np.ndarray:
        """Row ``F[c, y, x]``: the filter of output pixel (c, y, x) over the input; (C_in, H_in, W_in)."""
        return self.F[c, y, x]

    # ---- ledger -----------------------------------------------------------------------------------
    @cached_property
    def ledger(self) -> zarr.Array:
        """uint8 array over the compute task grid, 1 where a task has finished (one chunk per task)."""
        return self.group["ledger"]

    def done_tasks(self) -> set[tuple[int, ...]]:
        """Index tuples of the finished tasks."""
        return {tuple(int(i) for i in ix) for ix in np.argwhere(self.ledger[...] >= 1)}

    @property
    def finished(self) -> bool:
        """True when every compute task has finished (whether or not the store passed its verification)."""
        return bool((self.ledger[...] >= 1).all())

    def mark_done(self, task: tuple[int, ...], shards: int | None = None) -> None:
        """Record one finished task (writes only that task's own ledger chunk).

        Ledger values: 0 = not done; 1 = done (shard count not recorded); 2 + n = done, having stored n
        non-empty shards of F (255: n >= 253), which ``linterp verify`` checks against the files."""
        value = 1 if shards is None else 2 + min(int(shards), LEDGER_COUNT_MAX - 2)
        self.ledger[tuple(slice(i, i + 1) for i in task)] = value

    def unmark(self, tasks) -> None:
        """Mark tasks as not done (their shards are recomputed by a resumed compute)."""
        for task in tasks:
            self.ledger[tuple(slice(i, i + 1) for i in task)] = 0

    # ---- SVD --------------------------------------------------------------------------------------
    @property
    def has_svd(self) -> bool:
        try:
            svd = self.group["svd"]
        except KeyError:
            return False
        return all(name in svd for name in ("S", "U", "V"))

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S (k,), U (k, C_out, H_out, W_out), V (k, C_in, H_in, W_in)) as float32 numpy arrays."""
        if not self.has_svd:
            raise StoreError(f"{self.path}: the store has no SVD (run `linterp svd` first)")
        svd = self.group["svd"]
        return svd["S"][...], svd["U"][...], svd["V"][...]

    @property
    def svd_attrs(self) -> dict:
        return dict(self.group["svd"].attrs) if self.has_svd else {}

    def write_svd(self, S, U, V, residuals=None, attrs: dict | None = None) -> None:
        """Write (replace) ``svd/S`` (k,), ``svd/U`` (k, *out), ``svd/V`` (k, *in) and ``svd/residuals`` (k,).

        ``residuals`` are the relative residuals ‖F v − σ u‖ / σ of the pairs; ``attrs`` go on the ``svd``
        group (method, tolerance, timings ...).
        """
        S = np.asarray(S, dtype=np.float32).reshape(-1)
        k = S.shape[0]
        U = np.asarray(U, dtype=np.float32).reshape((k,) + self.out_shape)
        V = np.asarray(V, dtype=np.float32).reshape((k,) + self.in_shape)
        svd = self.group.require_group("svd")
        svd.attrs.clear()
        svd.attrs.update(attrs or {})
        _write_array(svd, "S", S, ("k",))
        _write_array(svd, "U", U, ("k",) + OUT_DIMS, chunks=(1,) + self.out_shape)
        _write_array(svd, "V", V, ("k",) + IN_DIMS, chunks=(1,) + self.in_shape)
        if residuals is not None:
            _write_array(svd, "residuals", np.asarray(residuals, dtype=np.float32).reshape(k), ("k",))
        elif "residuals" in svd:
            del svd["residuals"]


def _write_array(group, name, data, dims, chunks="auto"):
    group.create_array(name, data=data, chunks=chunks, compressors=_CODEC, dimension_names=dims,
                       overwrite=True)


def _open_group(path: Path, mode: str) -> zarr.Group:
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: not a linterp store (no zarr.json; is the path right?)")
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: corrupt store metadata ({err.__class__.__name__}: {err})") from None
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise StoreError(f"{path}: not a linterp store (not a Zarr v3 group)")
    try:
        return zarr.open_group(path, mode=mode, zarr_format=3)
    except Exception as err:  # zarr raises many kinds on damaged metadata
        raise StoreError(f"{path}: corrupt store ({err.__class__.__name__}: {err})") from None


def _validate(group: zarr.Group, path: Path) -> None:
    version = group.attrs.get("format_version")
    if version is None:
        raise StoreError(f"{path}: not a linterp store (no format_version attribute)")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: store format version {version}, this linterp reads version {FORMAT_VERSION}")
    try:
        arrays = {name: group[name] for name in ("x0", "y0", "residual", "F", "ledger")}
    except KeyError as err:
        raise StoreError(f"{path}: corrupt store: array {err} is missing") from None
    except Exception as err:
        raise StoreError(f"{path}: corrupt store ({err.__class__.__name__}: {err})") from None
    fshape = tuple(arrays["F"].shape)
    expect = {"x0": fshape[3:], "y0": fshape[:3], "residual": fshape[:3]}
    for name, shape in expect.items():
        if tuple(arrays[name].shape) != shape:
            raise StoreError(f"{path}: corrupt store: {name} has shape {tuple(arrays[name].shape)}, "
                             f"F implies {shape}")


def open_store(path, *, mode: str = "r", require_complete: bool = False) -> Store:
    """Open and validate a store; ``StoreError`` (one line) if it is missing, corrupt or foreign.

    ``mode``: "r" (read only) or "r+" (to write attributes or the SVD). ``require_complete``: also refuse a
    store whose computation has not finished.
    """
    path = Path(path)
    group = _open_group(path, mode)
    _validate(group, path)
    store = Store(group, path)
    if require_complete and not store.complete:
        raise StoreError(f"{path}: the store is incomplete (rerun `linterp compute` with the same arguments)")
    return store


def identity_mismatch(found: dict, wanted: dict) -> str | None:
    """A one-line description of how two identity dicts differ, or None when they agree."""
    diffs = [f"{key} is {found.get(key)!r}, not {wanted.get(key)!r}"
             for key in sorted(set(found) | set(wanted)) if found.get(key) != wanted.get(key)]
    return "; ".join(diffs) or None


def create_store(path, *, identity: dict, attrs: dict, x0, y0, residual, shards: tuple[int, ...],
                 chunks: tuple[int, ...], tasks: tuple[int, ...]) -> Store:
    """Create a store, or reopen the one at ``path`` to resume it if it was made from the same inputs.

    ``identity``: JSON dict that must equal the existing store's (model, weights sha256, image sha256, crop,
    tile, mode, ...); a store made from anything else is refused with ``StoreError``, never mixed.
    ``attrs``: further group attributes. ``x0`` (C_in,H_in,W_in); ``y0``, ``residual`` (C_out,H_out,W_out)
    (batched or vector forms are accepted, see ``_as_chw``). ``shards`` / ``chunks``: 6-tuples for F (shard =
    the region one task writes along its tiled axes). ``tasks``: the shape of the task grid (the ledger).
    """
    path = Path(path)
    identity = json.loads(json.dumps(identity))  # normalise tuples to lists, as stored
    x0, y0, residual = _as_chw(x0), _as_chw(y0), _as_chw(residual)
    if path.exists() and any(path.iterdir()):
        group = _open_group(path, "r+")
        found = group.attrs.get("identity")
        if found is None or group.attrs.get("format_version") is None:
            raise StoreError(f"{path}: exists and is not a linterp store; choose another --out")
        if group.attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format version {group.attrs.get('format_version')}; "
                             f"choose another --out")
        diff = identity_mismatch(found, identity)
        if diff:
            raise StoreError(f"{path}: the store was made from other inputs ({diff}); "
                             f"use another --out or delete it")
    else:
        group = zarr.open_group(path, mode="w", zarr_format=3)
        # identity first: a run killed during creation can then be resumed (arrays are recreated below)
        group.attrs.update({"format_version": FORMAT_VERSION, "identity": identity, "complete": False})
    group.attrs.update(attrs)
    fshape = y0.shape + x0.shape
    existing = {name for name in ("x0", "y0", "residual", "F", "ledger") if name in group}
    if "F" in existing and (tuple(group["F"].shape) != fshape or tuple(group["F"].shards or ()) != shards):
        raise StoreError(f"{path}: F has shape {tuple(group['F'].shape)}, expected {fshape}; "
                         f"use another --out or delete it")
    for name, data, dims in (("x0", x0, IN_DIMS), ("y0", y0, OUT_DIMS), ("residual", residual, OUT_DIMS)):
        _write_array(group, name, data, dims)  # small and deterministic: rewriting on resume is harmless
    if "F" not in existing:
        group.create_array("F", shape=fshape, dtype="float32", chunks=chunks, shards=shards,
                           compressors=_CODEC, fill_value=0.0, dimension_names=F_DIMS, config=_CONFIG)
    if "ledger" not in existing:
        group.create_array("ledger", shape=tasks, dtype="uint8", chunks=(1,) * len(tasks), fill_value=0,
                           compressors=None, dimension_names=tuple(f"task_{i}" for i in range(len(tasks))),
                           config=_CONFIG)
    store = Store(group, path)
    _validate(group, path)
    return store


def layout(in_shape, out_shape, tile: int, mode: str = "columns") -> tuple[tuple, tuple, tuple]:
    """Shards, inner chunks and task grid for F of a store.

    ``mode="columns"``: one task per square input tile of ``tile`` pixels; a shard is (C_out, tile·s_y,
    tile·s_x, C_in, tile, tile) where s = H_out/H_in is the spatial scale (so an input tile maps onto a
    matching output tile); inner chunks split the shard's spatial axes in halves until they hold at most
    ``INNER_VALUES`` values (small enough for fast row / column reads, large enough that per-chunk overhead
    stays small). ``mode="rows"``: one task per block of ``tile`` output channels at one output pixel
    (class scores: N outputs at 1×1); a shard holds those whole rows, one row per inner chunk. Returns (shards, chunks, tasks).
    """
    c_in, h_in, w_in = in_shape
    c_out, h_out, w_out = out_shape
    if mode == "rows":
        shards = (min(tile, c_out), 1, 1, c_in, h_in, w_in)
        chunks = (1, 1, 1, c_in, h_in, w_in)
        return shards, chunks, (math.ceil(c_out / shards[0]), h_out, w_out)
    t_y, t_x = min(tile, h_in), min(tile, w_in)
    o_y = max(1, round(t_y * h_out / h_in))
    o_x = max(1, round(t_x * w_out / w_in))
    shards = (c_out, o_y, o_x, c_in, t_y, t_x)
    return shards, _inner(shards), (math.ceil(h_in / t_y), math.ceil(w_in / t_x))


def _inner(shards: tuple[int, ...]) -> tuple[int, ...]:
    """Halve the spatial axes of a shard, keeping their proportions, until a chunk holds ``INNER_VALUES`` or
    fewer values. Proportional chunks (output side = scale × input side) make a column read and a row read
    cost about the same number of decompressed values."""
    chunk = list(shards)
    spatial = (1, 2, 4, 5)
    while math.prod(chunk) > INNER_VALUES:
        even = [i for i in spatial if chunk[i] % 2 == 0]
        if not even:
            break
        i = max(even, key=lambda k: (chunk[k] / shards[k], -k))
        chunk[i] //= 2
    return tuple(chunk)
