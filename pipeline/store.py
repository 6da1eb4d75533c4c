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
``dropped_l1``, ``error_l1``, ``error_max``, ``column_max``, ``support_radius``
               (C_in, H_in, W_in)                               compact stores only: the error of each column
                                                                (see ``pipeline.compact``)
=============  ===============================================  ============================================

Networks whose output is a vector (classifiers, shape (N,)) are stored with output shape (N, 1, 1). The ``svd`` group
is replaced whole (``Store.write_svd``): folders ``.svd-new`` and ``.svd-old`` beside it are a write in progress or
the leftovers of a killed one, never read.

``F`` is float32, zstd-compressed (compact stores: float16, or bfloat16 values in float32, blosc-compressed; see
``f_encoding``), sharded: one shard per (output tile, input tile) pair, which is exactly the
region one compute task writes, so no two tasks ever touch the same file. Inside a shard the inner chunks are
small spatial tiles in both domains; chunks that are all zero are not stored (fill value 0). Every array has
``dimension_names`` so that xarray, dask and napari read the store as it is.

Group attributes: defined once, by :class:`StoreAttrs` (the ``svd`` group's by :class:`SvdAttrs`); read them with
``Store.attrs`` and write them with ``Store.update_attrs``, which refuses names the schema does not define and values
that would tie a store to one machine (absolute paths, host names, addresses). Files are named portably, by
:class:`FileRef` (base name + sha256). Stores of format 1 open as they are: their attributes are migrated on read,
and rewritten in format 2 when the store is opened for writing.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from .shard_io import read_box

#: Version of the layout and attribute schema described here. Format 1 (weights and image recorded as paths, the
#: verification figures without a status) is still read; other versions are refused.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

IN_DIMS = ("c_in", "y_in", "x_in")
OUT_DIMS = ("c_out", "y_out", "x_out")
F_DIMS = OUT_DIMS + IN_DIMS
#: Compressor of exact arrays. The checksum: a damaged chunk fails to decode instead of reading as noise. Level 1:
#: on 1644 inner chunks of the full-face EDSR4x F, 0.842 of raw size (level 3: 0.845) in 0.69× level 3's encoding
#: time; decoding is as fast.
_CODEC = ZstdCodec(level=1, checksum=True)
#: Compressor of compact F (float16, or bfloat16 values in float32): blosc's bit shuffle gathers the zero low bits
#: and the similar exponents before zstd (0.86–0.88 of zstd alone on an edsr-small tile, benchmarks/bench_compute.py).
_COMPACT_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
_CONFIG = {"write_empty_chunks": False}
#: The per-column error arrays of compact stores (names as in ``pipeline.compact``).
ERROR_ARRAYS = ("dropped_l1", "error_l1", "error_max", "column_max", "support_radius")
#: Largest ledger value (uint8): a task that stored 253 or more shards.
LEDGER_COUNT_MAX = 255
#: Most values in one inner chunk of F (64 Ki float32 = 256 KiB before compression).
INNER_VALUES = 2**16
#: Folders of the store where ``Store.write_svd`` writes a new SVD group before it takes the place of ``svd``, and
#: where the replaced one waits until it is deleted (never read; a killed write's leftovers go with the next write).
SVD_NEW, SVD_OLD = ".svd-new", ".svd-old"


class StoreError(ValueError):
    """A store that is missing, corrupt, foreign, incomplete or made from other inputs (one-line message)."""


# ---- the attribute schema ---------------------------------------------------------------------------------

#: ``verification["status"]`` values: "passed" only when every check of the store passed.
VERIFICATION_STATUSES = ("passed", "failed", "unverified")
#: ``approximations[i]["kind"]`` values: how a non-piecewise-linear operation was linearised at x0.
APPROXIMATION_KINDS = ("secant", "frozen-statistics", "frozen-factor")
#: Strings that tie a value to one machine: absolute POSIX / Windows / UNC paths, home-relative paths, URLs and
#: scheduler addresses (scheme://…), IPv4 host:port.
_NOT_PORTABLE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)|://|\b\d{1,3}(\.\d{1,3}){3}:\d+\b")


@dataclass(frozen=True)
class FileRef:
    """A file named portably: ``name`` is its base name (no folders), ``sha256`` the hex digest of its bytes.

    Weights: ``name`` "random" (and ``sha256`` "random") for a seeded random initialisation, None for models
    without parameters. Images: ``name`` may be a label (the built-in "astronaut-face", whose ``sha256`` is that
    of its uint8 pixels).
    """

    name: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        if self.name is not None and ("/" in self.name or "\\" in self.name):
            raise ValueError(f"a file is recorded by its name, not a path: {self.name!r}")

    def to_json(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value) -> "FileRef":
        """From {"name", "sha256"} (or a FileRef, or None = unknown)."""
        if isinstance(value, FileRef):
            return value
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"expected {{'name', 'sha256'}}, got {value!r}")
        return cls(value.get("name"), value.get("sha256"))


class _Attributes:
    """A dataclass of JSON attributes with a fixed set of names; its ``extra`` field keeps, as found, the
    attributes of a group that the class does not define."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The attribute names of the schema (``extra`` aside)."""
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    def to_json(self) -> dict:
        """The attributes as JSON values (``extra`` merged back in), as written to the group."""
        out = dict(self.extra)
        for name in self.names():
            value = getattr(self, name)
            out[name] = value.to_json() if isinstance(value, FileRef) else value
        return json.loads(json.dumps(out))  # tuples -> lists, copies

    @classmethod
    def from_json(cls, raw: dict):
        """From a group's attributes."""
        known = set(cls.names())
        return cls(**{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known})

    # dict-style reads of the same values (JSON), for callers that treat the attributes as a mapping
    def __getitem__(self, name: str):
        if name in self.names():
            return self.to_json()[name]
        return self.extra[name]

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: str) -> bool:
        return name in self.names() or name in self.extra


def _unverified() -> dict:
    return {"status": "unverified", "checks": []}


@dataclass
class StoreAttrs(_Attributes):
    """The group attributes of a store (format 2), as stored in its ``zarr.json`` (JSON values).

    What was computed: ``model`` (registry name, or ``file.py:factory`` / ``package.module:factory`` for a user
    model), ``model_spec`` (user models only, else None: how to rebuild it, without paths: {"kind": "file" |
    "module" | "object", "factory", "args", "file": {"name", "sha256"}, "module" (module specs), "class" (module
    objects), "state_sha256": the digest of the built parameters and buffers}), ``task`` ("sr", "i2i", "classify"), ``scale`` (output / input
    side), ``colour`` ("rgb", "y", "gray"), ``value_range`` ([lo, hi], the model's units of pixel values 0 and
    255), ``weights`` and ``image`` (:class:`FileRef`), ``crop`` ([x, y, w, h] pixels of the image, or None),
    ``identity`` (what must match for a compute run to resume into the store: model, weights / image / x0 sha256,
    crop, mode, tile, batch, shapes). How: ``mode`` ("columns" / "rows"), ``tile`` (input tile side, pixels),
    ``receptive_radius`` (input pixels, None = global), ``output_shape`` (as the network returns it), ``dtype``
    of F ("float32", "float16" or "bfloat16"), ``support_tol`` (None: every column's whole support is kept; a
    fraction T: each column keeps the smallest window around its pixel holding all but T of its L1 mass; see
    ``pipeline.compact``). Results:
    ``complete`` (finished and verified), ``verification`` ({"status": one of ``VERIFICATION_STATUSES``,
    "checks": [{"name", "value", "tolerance", "passed", "detail"}, …], plus free figures such as
    "reconstruction_rel"}), ``jacobian_exact`` (F is the Jacobian of f at x0; None = not yet known),
    ``approximations`` ([{"op", "where", "kind"}, …], kind in ``APPROXIMATION_KINDS``), ``geometry`` (the figures
    of ``linterp geometry``, or None), ``timings`` (runs, seconds, tasks, device, scheduler kind), ``versions``
    (library versions), ``note`` (a sentence shown with the store, e.g. a stand-in). ``extra``: attributes this
    version does not define, kept as found (never written by linterp).
    """

    model: str | None = None
    model_spec: dict | None = None
    task: str | None = None
    scale: int | None = None
    colour: str | None = None
    value_range: list[float] | None = None
    weights: FileRef = field(default_factory=FileRef)
    image: FileRef = field(default_factory=FileRef)
    crop: list[int] | None = None
    identity: dict = field(default_factory=dict)
    mode: str | None = None
    tile: int | None = None
    receptive_radius: int | None = None
    output_shape: list[int] | None = None
    dtype: str = "float32"
    support_tol: float | None = None
    complete: bool = False
    verification: dict = field(default_factory=_unverified)
    jacobian_exact: bool | None = None
    approximations: list[dict] = field(default_factory=list)
    geometry: dict | None = None
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    note: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.weights, self.image = FileRef.from_json(self.weights), FileRef.from_json(self.image)
        self.complete = bool(self.complete)
        self.verification = dict(_unverified(), **(self.verification or {}))

    def check(self) -> None:
        """Raise ``ValueError`` for values outside the schema's vocabularies (checked when written; a reader
        takes what it finds, so that a store from a newer linterp still opens)."""
        if self.verification["status"] not in VERIFICATION_STATUSES:
            raise ValueError(f"verification status must be one of {', '.join(VERIFICATION_STATUSES)}, "
                             f"not {self.verification['status']!r}")
        for item in self.approximations:
            if not isinstance(item, dict) or item.get("kind") not in APPROXIMATION_KINDS:
                raise ValueError(f"an approximation is {{'op', 'where', 'kind'}} with kind in "
                                 f"{', '.join(APPROXIMATION_KINDS)}, not {item!r}")

    @classmethod
    def from_json(cls, raw: dict) -> "StoreAttrs":
        """From a group's attributes (format 1 attributes are migrated first); ``ValueError`` when a value the
        schema defines has another JSON type (a scale of "four", a complete of "yes")."""
        raw = migrate_v1(raw) if raw.get("format_version") == 1 else raw
        for name, kinds in JSON_TYPES.items():
            value = raw.get(name)
            if value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
                wanted = " or ".join({int: "an integer", float: "a number", bool: "true or false", str: "text",
                                      list: "a list", dict: "an object"}[k] for k in kinds)
                raise ValueError(f"attribute {name!r} is {value!r}, not {wanted}")
        for name, (length, what) in JSON_LISTS.items():
            value = raw.get(name)
            if value is not None and ((length is not None and len(value) != length) or not all(
                    isinstance(v, (int, float) if what == "numbers" else int) and not isinstance(v, bool)
                    for v in value)):
                raise ValueError(f"attribute {name!r} is {value!r}, not a list of {f'{length} ' if length else ''}"
                                 f"{what}")
        if raw.get("dtype") not in (None, *F_DTYPES):  # F could not be decoded as it says
            raise ValueError(f"attribute 'dtype' is {raw['dtype']!r}, not one of {', '.join(F_DTYPES)}")
        return super().from_json(raw)

    def for_viewer(self) -> dict:
        """The attributes as the site's manifest gives them to the viewer: the schema's JSON with ``weights`` and
        ``image`` as their file names, their digests as ``weights_sha256`` / ``image_sha256``."""
        out = self.to_json()
        out.update(weights=self.weights.name, weights_sha256=self.weights.sha256, image=self.image.name,
                   image_sha256=self.image.sha256)
        return out



def check_portable(values: dict, where: str = "store attributes") -> None:
    """Raise ``ValueError`` when a string anywhere in ``values`` is an absolute path, a URL or an address."""
    def walk(value, key):
        if isinstance(value, str) and _NOT_PORTABLE.search(value):
            raise ValueError(f"{where} must not hold paths or addresses of this machine: {key} = {value!r}")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    for key, value in values.items():
        walk(value, key)


def migrate_v1(raw: dict) -> dict:
    """Format 1 attributes -> format 2: weights / image paths become :class:`FileRef` (base name + the recorded
    sha256), the verification figures get status "unverified", a scheduler address becomes "distributed"."""
    out = {k: v for k, v in raw.items() if k not in ("weights_sha256", "image_sha256")}

    def ref(name, sha):
        return {"name": name if name in (None, "random") else os.path.basename(str(name).rstrip("/\\")),
                "sha256": sha}

    out["weights"] = ref(raw.get("weights"), raw.get("weights_sha256"))
    out["image"] = ref(raw.get("image"), raw.get("image_sha256"))
    out["verification"] = dict(_unverified(), **(raw.get("verification") or {}))
    timings = dict(raw.get("timings") or {})
    if "://" in str(timings.get("scheduler", "")):
        timings["scheduler"] = "distributed"
    out["timings"] = timings
    out["format_version"] = FORMAT_VERSION
    return out


@dataclass
class SvdAttrs(_Attributes):
    """The attributes of a store's ``svd`` group (see ``pipeline.svd.svd_store``).

    ``method`` ("lanczos" / "randomized"), ``k`` (pairs), ``source`` ("store": the stored F, "model": the
    interpreter), ``tol`` (asked relative residual), ``converged``, ``iterations`` (steps), ``operator_passes``
    (vectors through F and back), ``block``, ``step_width``, ``seed``, ``resumed`` (from a checkpoint),
    ``seconds``, ``sign_convention`` (in words), ``residual_forward`` / ``residual_transpose`` (per pair, k
    values: ‖F v − s u‖ / s and ‖Fᵀu − s v‖ / s). ``extra``: attributes this version does not define.
    """

    method: str | None = None
    k: int | None = None
    source: str | None = None
    tol: float | None = None
    converged: bool | None = None
    iterations: int | None = None
    operator_passes: int | None = None
    block: int | None = None
    step_width: int | None = None
    seed: int | None = None
    resumed: bool | None = None
    seconds: float | None = None
    sign_convention: str | None = None
    residual_forward: list[float] | None = None
    residual_transpose: list[float] | None = None
    extra: dict = field(default_factory=dict)


#: the JSON types of the store attributes that a reader checks (None is allowed for each)
JSON_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("model", "task", "colour", "mode", "dtype", "note"), (str,)),
    **dict.fromkeys(("scale", "tile", "receptive_radius", "format_version"), (int,)),
    **dict.fromkeys(("complete", "jacobian_exact"), (bool,)), "support_tol": (int, float),
    **dict.fromkeys(("value_range", "crop", "output_shape", "approximations"), (list,)),
    **dict.fromkeys(("identity", "verification", "timings", "versions", "model_spec", "geometry"), (dict,)),
}
#: precisions of a stored F (``StoreAttrs.dtype``; ``f_encoding``)
F_DTYPES = ("float32", "float16", "bfloat16")
#: the list attributes whose items a reader checks: (length or None, "numbers" / "integers")
JSON_LISTS: dict[str, tuple[int | None, str]] = {"value_range": (2, "numbers"), "crop": (4, "integers"),
                                                 "output_shape": (None, "integers")}


def _pixel(shape: tuple[int, int, int], index: tuple[int, int, int], what: str) -> tuple[int, int, int]:
    """``index`` (c, y, x) of a domain of ``shape`` (C, H, W), negative values counted from the end as numpy
    does; ``IndexError`` (one line, naming the valid ranges) outside it."""
    if any(not -n <= i < n for i, n in zip(index, shape)):
        raise IndexError(f"{what} pixel {tuple(index)} is outside F's {what} of shape {tuple(shape)} (channel, y, x "
                         f"from 0 to {shape[0] - 1}, {shape[1] - 1}, {shape[2] - 1})")
    return tuple(int(i) % n for i, n in zip(index, shape))


def _point(c: int, y: int, x: int) -> tuple[slice, slice, slice]:
    """One pixel (c, y, x) as a box of three length-1 slices."""
    return slice(c, c + 1), slice(y, y + 1), slice(x, x + 1)


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

    Arrays are float32 (``F`` of a compact store: see ``f_encoding``; its rows and columns are read as float32);
    ``F`` is the lazily read zarr array, the others are read once into numpy.
    """

    def __init__(self, group: zarr.Group, path: Path):
        self.group = group
        self.path = path

    def __repr__(self):
        return f"Store({str(self.path)!r}, F{tuple(self.F.shape)}, complete={self.complete})"

    # ---- attributes -------------------------------------------------------------------------------
    @property
    def attrs(self) -> StoreAttrs:
        """The group attributes (:class:`StoreAttrs`; a fresh copy on each access)."""
        return StoreAttrs.from_json(dict(self.group.attrs))

    def update_attrs(self, **values) -> None:
        """Set group attributes: names of :class:`StoreAttrs`, values as its fields take them (JSON, or
        :class:`FileRef`). Unknown names, invalid values and machine-bound strings raise ``ValueError``.

        All of them are written at once (one atomic rewrite of ``zarr.json``): a kill leaves the old values or the
        new ones, never some of each."""
        unknown = sorted(set(values) - set(StoreAttrs.names()))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not store attributes (the schema is pipeline.store.StoreAttrs)")
        updated = replace(self.attrs, **values)
        updated.check()
        written = {k: v for k, v in updated.to_json().items() if k in values}
        check_portable(written)
        self.group.update_attributes(written)

    @property
    def complete(self) -> bool:
        return self.attrs.complete

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
        """Column ``F[..., c, y, x]``: the response to a unit impulse at input (c, y, x); (C_out, H_out, W_out).
        Damaged data raises ``shard_io.ShardReadError`` (or zarr's error), as ``row`` does."""
        whole = (slice(None),) * 3
        point = _point(*_pixel(self.in_shape, (c, y, x), "input"))
        return np.asarray(read_box(self.F, whole + point)[..., 0, 0, 0], dtype=np.float32)

    def row(self, c: int, y: int, x: int) -> np.ndarray:
        """Row ``F[c, y, x]``: the filter of output pixel (c, y, x) over the input; (C_in, H_in, W_in)."""
        whole = (slice(None),) * 3
        point = _point(*_pixel(self.out_shape, (c, y, x), "output"))
        return np.asarray(read_box(self.F, point + whole)[0, 0, 0], dtype=np.float32)

    # ---- compact stores ---------------------------------------------------------------------------
    @property
    def compact(self) -> bool:
        """True when F is stored in a lower precision or on a truncated support (see ``pipeline.compact``)."""
        return "error_max" in self.group

    def errors(self) -> dict[str, np.ndarray] | None:
        """The per-column error arrays of a compact store (``pipeline.compact.ERROR_ARRAYS``, each (C_in, H_in,
        W_in)), or None for an exact store."""
        if not self.compact:
            return None
        return {name: self.group[name][...] for name in ERROR_ARRAYS}

    def write_errors(self, box: tuple[int, int, int, int], figures: dict[str, np.ndarray]) -> None:
        """Write the error figures (each (C_in, h, w)) of the input tile ``box`` = (top, left, h, w): exactly the
        chunk of that tile, so compute tasks never share one."""
        top, left, h, w = box
        for name in ERROR_ARRAYS:
            self.group[name][:, top:top + h, left:left + w] = figures[name]

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
        return self._svd_group() is not None

    def _svd_group(self) -> zarr.Group | None:
        """The ``svd`` group when it holds S, U and V, else None."""
        try:
            svd = self.group["svd"]
        except KeyError:
            return None
        return svd if all(name in svd for name in ("S", "U", "V")) else None

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S (k,), U (k, C_out, H_out, W_out), V (k, C_in, H_in, W_in)) as float32 numpy arrays."""
        svd = self._svd_group()
        if svd is None:
            raise StoreError(f"{self.path}: the store has no SVD (run `linterp svd` first)")
        return svd["S"][...], svd["U"][...], svd["V"][...]

    @property
    def svd_k(self) -> int:
        """How many singular pairs the store holds (0 without an SVD)."""
        svd = self._svd_group()
        return 0 if svd is None else int(svd["S"].shape[0])

    def svd_values(self) -> np.ndarray:
        """The singular values S (k,) alone, float32 (empty without an SVD)."""
        svd = self._svd_group()
        return np.zeros(0, np.float32) if svd is None else svd["S"][...]

    def svd_residuals(self) -> np.ndarray | None:
        """``svd/residuals`` (k,): the relative residual of each pair, or None when not written."""
        svd = self._svd_group()
        return svd["residuals"][...] if svd is not None and "residuals" in svd else None

    @property
    def svd_attrs(self) -> SvdAttrs:
        svd = self._svd_group()
        return SvdAttrs.from_json(dict(svd.attrs) if svd is not None else {})

    def write_svd(self, S, U, V, residuals=None, attrs: SvdAttrs | None = None) -> None:
        """Write (replace) ``svd/S`` (k,), ``svd/U`` (k, *out), ``svd/V`` (k, *in) and ``svd/residuals`` (k,).

        ``residuals`` are the relative residuals ‖F v − σ u‖ / σ of the pairs; ``attrs`` (:class:`SvdAttrs`, or a
        dict of its fields) go on the ``svd`` group (method, tolerance, timings ...).

        Whole or not at all: the group is written complete (attributes, then arrays) as ``SVD_NEW``, then the old
        ``svd`` is renamed ``SVD_OLD``, ``SVD_NEW`` renamed ``svd`` and ``SVD_OLD`` deleted. A reader (linterp or
        plain zarr) finds the old SVD, the new one, or — killed between the two renames — none; never a mix.
        """
        S = np.asarray(S, dtype=np.float32).reshape(-1)
        k = S.shape[0]
        U = np.asarray(U, dtype=np.float32).reshape((k,) + self.out_shape)
        V = np.asarray(V, dtype=np.float32).reshape((k,) + self.in_shape)
        meta = (attrs if isinstance(attrs, SvdAttrs) else SvdAttrs.from_json(attrs or {})).to_json()
        check_portable(meta, "svd attributes")
        for name in (SVD_NEW, SVD_OLD):  # leftovers of a killed write
            shutil.rmtree(self.path / name, ignore_errors=True)
        new = self.group.create_group(SVD_NEW, attributes=meta)
        _write_array(new, "S", S, ("k",))
        _write_array(new, "U", U, ("k",) + OUT_DIMS, chunks=(1,) + self.out_shape)
        _write_array(new, "V", V, ("k",) + IN_DIMS, chunks=(1,) + self.in_shape)
        if residuals is not None:
            _write_array(new, "residuals", np.asarray(residuals, dtype=np.float32).reshape(k), ("k",))
        if (self.path / "svd").exists():
            os.rename(self.path / "svd", self.path / SVD_OLD)
        os.rename(self.path / SVD_NEW, self.path / "svd")
        shutil.rmtree(self.path / SVD_OLD, ignore_errors=True)


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


def _check_version(group: zarr.Group, path: Path) -> int:
    """The store's format version; ``StoreError`` (one line, saying what to do) for versions not read here."""
    version = group.attrs.get("format_version")
    if version is None:
        raise StoreError(f"{path}: not a linterp store (no format_version attribute)")
    if version in READABLE_VERSIONS:
        return version
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise StoreError(f"{path}: store format version {version} is newer than this linterp reads "
                         f"({READABLE_VERSIONS[0]}–{FORMAT_VERSION}); upgrade linterp (pip install -U linterp)")
    raise StoreError(f"{path}: store format version {version!r} is not one this linterp reads "
                     f"({READABLE_VERSIONS[0]}–{FORMAT_VERSION}); recompute it with `linterp compute`")


def _validate(group: zarr.Group, path: Path) -> None:
    _check_version(group, path)
    try:
        StoreAttrs.from_json(dict(group.attrs))
    except (TypeError, ValueError) as err:
        raise StoreError(f"{path}: corrupt store attributes ({str(err).splitlines()[0]})") from None
    try:
        arrays = {name: group[name] for name in ("x0", "y0", "residual", "F", "ledger")}
    except KeyError as err:
        raise StoreError(f"{path}: corrupt store: array {err} is missing") from None
    except Exception as err:
        raise StoreError(f"{path}: corrupt store ({err.__class__.__name__}: {err})") from None
    fshape = tuple(arrays["F"].shape)
    expect = {"x0": fshape[3:], "y0": fshape[:3], "residual": fshape[:3]}
    if "error_max" in group:  # a compact store: every error array, over the input pixels
        try:
            arrays.update({name: group[name] for name in ERROR_ARRAYS})
        except KeyError as err:
            raise StoreError(f"{path}: corrupt store: array {err} is missing") from None
        expect.update({name: fshape[3:] for name in ERROR_ARRAYS})
    for name, shape in expect.items():
        if tuple(arrays[name].shape) != shape:
            raise StoreError(f"{path}: corrupt store: {name} has shape {tuple(arrays[name].shape)}, "
                             f"F implies {shape}")


def _upgrade(group: zarr.Group) -> None:
    """Rewrite the attributes of a format 1 store in the current format, in one atomic rewrite of ``zarr.json``
    (a kill leaves format 1 or format 2, whole); arrays are unchanged."""
    if group.attrs.get("format_version") != FORMAT_VERSION:
        group.attrs.put(StoreAttrs.from_json(dict(group.attrs)).to_json())


def open_store(path, *, mode: str = "r", require_complete: bool = False) -> Store:
    """Open and validate a store; ``StoreError`` (one line) if it is missing, corrupt or foreign.

    ``mode``: "r" (read only) or "r+" (to write attributes or the SVD; a format 1 store is then upgraded in
    place). ``require_complete``: also refuse a store whose computation has not finished.
    """
    path = Path(path)
    group = _open_group(path, mode)
    _validate(group, path)
    if mode != "r":
        _upgrade(group)
    store = Store(group, path)
    if require_complete and not store.complete:
        raise StoreError(f"{path}: the store is incomplete (rerun `linterp compute` with the same arguments)")
    return store


def recorded_identity(path) -> dict | None:
    """The identity recorded in the linterp store at ``path`` (JSON dict), also in one that a run killed right after
    its first write left holding nothing else (``create_store`` resumes it); None where no readable linterp store
    is."""
    path = Path(path)
    try:
        group = _open_group(path, "r")
        _check_version(group, path)
    except StoreError:
        return None
    found = group.attrs.get("identity")
    return found if isinstance(found, dict) else None


def identity_mismatch(found: dict, wanted: dict) -> str | None:
    """A one-line description of how two identity dicts differ, or None when they agree."""
    diffs = [f"{key} is {found.get(key)!r}, not {wanted.get(key)!r}"
             for key in sorted(set(found) | set(wanted)) if found.get(key) != wanted.get(key)]
    return "; ".join(diffs) or None


def f_encoding(dtype: str) -> tuple[str, object]:
    """(zarr data type, compressor) of F for a store's precision ``dtype`` (``StoreAttrs.dtype``): float32 and
    zstd (exact); float16 and blosc; bfloat16 values (low 16 bits zero) in float32 and blosc, since zarr v3 has no
    bfloat16 type and a float32 array stays readable by every zarr reader."""
    encodings = {"float32": ("float32", _CODEC), "float16": ("float16", _COMPACT_CODEC),
                 "bfloat16": ("float32", _COMPACT_CODEC)}
    if dtype not in encodings:
        raise StoreError(f"unknown dtype {dtype!r} for F ({', '.join(encodings)})")
    return encodings[dtype]


def create_store(path, *, identity: dict, attrs: dict, x0, y0, residual, shards: tuple[int, ...],
                 chunks: tuple[int, ...], tasks: tuple[int, ...], dtype: str = "float32",
                 compact: bool = False) -> Store:
    """Create a store, or reopen the one at ``path`` to resume it if it was made from the same inputs.

    ``identity``: JSON dict that must equal the existing store's (model, weights sha256, image sha256, crop,
    tile, mode, ...); a store made from anything else is refused with ``StoreError``, never mixed.
    ``attrs``: further group attributes (names and values of :class:`StoreAttrs`). ``x0`` (C_in,H_in,W_in); ``y0``, ``residual`` (C_out,H_out,W_out)
    (batched or vector forms are accepted, see ``_as_chw``). ``shards`` / ``chunks``: 6-tuples for F (shard =
    the region one task writes along its tiled axes). ``tasks``: the shape of the task grid (the ledger).
    ``dtype``: F's precision (see ``f_encoding``); ``compact``: also create the per-column error arrays
    (``pipeline.compact.ERROR_ARRAYS``), chunked by input tile like the tasks.

    Written in this order, each step atomic: a new group's ``zarr.json`` with the identity and format version
    (one write), the other attributes (one write), x0, y0 and residual, then the metadata of F, the error arrays
    and the ledger (their chunks are the compute tasks'). A run killed at any step resumes when rerun with the
    same inputs.
    """
    path = Path(path)
    identity = json.loads(json.dumps(identity))  # normalise tuples to lists, as stored
    x0, y0, residual = _as_chw(x0), _as_chw(y0), _as_chw(residual)
    if path.exists() and any(path.iterdir()):
        group = _open_group(path, "r+")
        found = group.attrs.get("identity")
        if found is None or group.attrs.get("format_version") is None:
            raise StoreError(f"{path}: exists and is not a linterp store; choose another --out")
        _check_version(group, path)
        diff = identity_mismatch(found, identity)
        if diff:
            raise StoreError(f"{path}: the store was made from other inputs ({diff}); "
                             f"use another --out or delete it")
        _upgrade(group)
    else:
        first = StoreAttrs(identity=identity).to_json()
        check_portable(first)
        # the group's first zarr.json already holds the identity and format version, so a run killed at any later
        # point resumes (the arrays are recreated below)
        group = zarr.open_group(path, mode="w", zarr_format=3, attributes=first)
    Store(group, path).update_attrs(**attrs)
    fshape = y0.shape + x0.shape
    existing = {name for name in ("x0", "y0", "residual", "F", "ledger") if name in group}
    if "F" in existing and (tuple(group["F"].shape) != fshape or tuple(group["F"].shards or ()) != shards):
        raise StoreError(f"{path}: F has shape {tuple(group['F'].shape)}, expected {fshape}; "
                         f"use another --out or delete it")
    for name, data, dims in (("x0", x0, IN_DIMS), ("y0", y0, OUT_DIMS), ("residual", residual, OUT_DIMS)):
        _write_array(group, name, data, dims)  # small and deterministic: rewriting on resume is harmless
    if "F" not in existing:
        storage, codec = f_encoding(dtype)
        group.create_array("F", shape=fshape, dtype=storage, chunks=chunks, shards=shards,
                           compressors=codec, fill_value=0.0, dimension_names=F_DIMS, config=_CONFIG)
    for name in ERROR_ARRAYS if compact else ():
        if name not in group:
            group.create_array(name, shape=x0.shape, dtype="int32" if name == "support_radius" else "float32",
                               chunks=(x0.shape[0],) + tuple(shards[4:6]), compressors=_CODEC, fill_value=0,
                               dimension_names=IN_DIMS)
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
