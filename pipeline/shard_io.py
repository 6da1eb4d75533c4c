"""Fast reads and writes of boxes of F: a store's shard files decoded and encoded here, not by zarr's codec pipeline.

zarr 3.1 decodes a sharded array through its asynchronous codec pipeline, which costs about five times the CPU of
decoding the same inner chunks directly (400 shards of the full-face EDSR store, 519 MiB: zarr 2.3–2.6 s wall and
2.7–3.2 s CPU, numcodecs on the same chunks 0.5 s). Reading F is most of the work of ``linterp verify``, of the
geometry figures and of the export, so for the layout linterp writes this module reads the shard files itself, as
the Zarr v3 sharding specification lays them out:

- one ``sharding_indexed`` codec on a regular chunk grid, keys "c/i/j/..." separated by "/", in a local folder;
- inner chunks encoded by ``bytes`` (little endian) then ``zstd`` or ``blosc`` (both decoded by numcodecs; zstd
  checks its frame checksum);
- the index at the end of the file: little-endian uint64 (offset, nbytes) per inner chunk in C order,
  2^64 − 1 for an absent one, then its CRC32C (checked here, as zarr checks it).

An absent shard or inner chunk reads as the fill value. Any other layout (or a box with steps or integer indices)
is read by zarr, so ``read_box`` always returns exactly what ``F[box]`` returns (tests/test_shard_io.py).
Decoding releases the GIL: ``threads`` > 1 decodes the shards of one box in parallel.

``write_box`` writes whole shards (a box aligned to the shard grid, as compute's tasks write them) the same way:
inner chunks that hold only the fill value are left out, as zarr leaves them out, a shard without any stored chunk
has no file, and each file is written under a temporary name and then renamed, so a
killed writer never leaves a partial shard. zarr reads what it writes (tests/test_shard_io.py); other layouts
and unaligned boxes are written by zarr. Encoding through zarr was about an eighth of a compute task.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .parallel import ordered_map

#: index entry of an inner chunk that is not stored
ABSENT = np.iinfo(np.uint64).max
#: Shards decoded in parallel by the readers of whole stores (verify, geometry): decoding releases the GIL.
READ_THREADS = 2
#: numcodecs' numbers of zarr's blosc shuffles
BLOSC_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class ShardReadError(ValueError):
    """A shard file that cannot be decoded (truncated, index checksum, inner chunk); the message names it."""


@dataclass(frozen=True)
class Layout:
    """What ``read_box`` needs to know of a sharded array: ``root`` (its folder), ``shape``, ``shard`` and
    ``chunk`` (inner chunk) shapes, ``dtype`` (little endian), ``fill`` value and the inner ``codec`` (numcodecs,
    configured as the array's metadata says, so ``write_box`` encodes as zarr would)."""

    root: Path
    shape: tuple[int, ...]
    shard: tuple[int, ...]
    chunk: tuple[int, ...]
    dtype: np.dtype
    fill: object
    codec: object

    @property
    def per_shard(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.shard, self.chunk))

    def shard_path(self, index: tuple[int, ...]) -> Path:
        return self.root.joinpath("c", *map(str, index))


def layout(F) -> Layout | None:
    """The ``Layout`` of zarr array ``F`` when this module can read it, else None (zarr reads it)."""
    try:
        from numcodecs import Blosc, Zstd
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.storage import LocalStore

        meta = F.metadata
        codecs = meta.codecs
        store = F.store_path.store
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or not isinstance(store, LocalStore):
            return None
        sharding = codecs[0]
        inner = sharding.codecs
        if sharding.index_location.value != "end" or \
                [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec] or \
                sharding.index_codecs[0].endian.value != "little" or len(inner) != 2 or \
                not isinstance(inner[0], BytesCodec) or (inner[0].endian is not None
                                                         and inner[0].endian.value != "little") or \
                getattr(meta.chunk_key_encoding, "separator", None) != "/" or \
                type(meta.chunk_key_encoding).__name__ != "DefaultChunkKeyEncoding":
            return None
        c = inner[1]
        if isinstance(c, ZstdCodec):
            codec = Zstd(level=c.level, checksum=c.checksum)
        elif isinstance(c, BloscCodec):  # configured as zarr configures it (a blosc frame also describes itself)
            codec = Blosc.from_config({"cname": c.cname.name, "clevel": c.clevel, "blocksize": c.blocksize,
                                       "shuffle": BLOSC_SHUFFLES[c.shuffle.name], "typesize": c.typesize})
        else:
            return None
        dtype = np.dtype(F.dtype).newbyteorder("<")
        return Layout(Path(store.root) / F.store_path.path, tuple(F.shape), tuple(F.shards),
                      tuple(sharding.chunk_shape), dtype, dtype.type(F.fill_value), codec)
    except (AttributeError, ImportError, TypeError, ValueError):
        return None


def shard_index(lay: Layout, index: tuple[int, ...]) -> np.ndarray | None:
    """The index of shard ``index``: uint64 array (*per_shard, 2) of (offset, nbytes), or None when the shard
    is not stored. Raises ``ShardReadError`` for a truncated file or an index whose CRC32C does not match."""
    try:
        with open(lay.shard_path(index), "rb") as f:
            return _read_index(lay, index, f)
    except FileNotFoundError:
        return None


def _read_index(lay: Layout, index: tuple[int, ...], f) -> np.ndarray:
    """``shard_index`` from the open shard file ``f``."""
    import google_crc32c

    size = 16 * math.prod(lay.per_shard) + 4
    f.seek(0, os.SEEK_END)
    if f.tell() < size:
        raise ShardReadError(f"{_key(lay, index)}: shard file of {f.tell()} bytes is shorter than its index")
    f.seek(-size, os.SEEK_END)
    raw = f.read(size)
    if np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        raise ShardReadError(f"{_key(lay, index)}: the shard index does not match its CRC32C checksum")
    return np.frombuffer(raw[:-4], "<u8").reshape(lay.per_shard + (2,))


def _key(lay: Layout, index: tuple[int, ...]) -> str:
    return f"{lay.root.name}/c/" + "/".join(map(str, index))


def decode_shard(lay: Layout, index: tuple[int, ...], box: tuple[slice, ...]) -> list[tuple[tuple, np.ndarray]]:
    """The stored inner chunks of shard ``index`` that meet ``box``, decoded: a list of (region, values), the
    region (a tuple of slices of F) clipped to ``box`` and the values of F there. Absent chunks are left out
    (they hold the fill value). Raises ``ShardReadError`` naming the shard and inner chunk of damaged data."""
    try:
        f = open(lay.shard_path(index), "rb")
    except FileNotFoundError:
        return []
    base = [i * s for i, s in zip(index, lay.shard)]
    ranges = [range(max(b.start - o, 0) // c, min(-(-(b.stop - o) // c), n))
              for b, o, c, n in zip(box, base, lay.chunk, lay.per_shard)]
    found = []
    with f:
        entries = _read_index(lay, index, f)
        for inner in np.ndindex(*[len(r) for r in ranges]):
            ix = tuple(r[i] for r, i in zip(ranges, inner))
            offset, nbytes = (int(v) for v in entries[ix])
            if offset == ABSENT:
                continue
            f.seek(offset)
            raw = f.read(nbytes)
            try:
                chunk = np.frombuffer(lay.codec.decode(raw), lay.dtype).reshape(lay.chunk)
            except Exception as err:  # noqa: BLE001 - numcodecs raises several kinds on damaged data
                raise ShardReadError(f"{_key(lay, index)}: inner chunk {ix} does not decode "
                                     f"({type(err).__name__}: {err})") from err
            start = [o + i * c for o, i, c in zip(base, ix, lay.chunk)]
            region = tuple(slice(max(b.start, s), min(b.stop, s + c)) for b, s, c in zip(box, start, lay.chunk))
            if any(r.stop <= r.start for r in region):
                continue
            inside = tuple(slice(r.start - s, r.stop - s) for r, s in zip(region, start))
            found.append((region, chunk[inside]))
    return found


def shards_of(grid: tuple[int, ...], box: tuple[slice, ...]) -> list[tuple[int, ...]]:
    """Indices of the shards (of shape ``grid``) that meet ``box``, in C order."""
    ranges = [range(s.start // g, -(-s.stop // g)) for s, g in zip(box, grid)]
    return [tuple(r[i] for r, i in zip(ranges, ix)) for ix in np.ndindex(*[len(r) for r in ranges])]


def decoded(lay: Layout, jobs, threads: int = 1, then: Callable | None = None):
    """Yield ``(job, decode_shard(lay, *job))`` for each (shard index, box) job in order, or ``(job, error)``
    where it raised ``ShardReadError``; ``threads`` > 1 decodes shards ahead in parallel (``parallel.ordered_map``).
    ``then(region, values)``: applied to each decoded chunk in the decoding thread, its result yielded in place of
    the values (work that releases the GIL, such as products, then runs in parallel too)."""
    def run(job):
        try:
            found = decode_shard(lay, *job)
        except ShardReadError as err:
            return job, err
        return job, found if then is None else [(region, then(region, values)) for region, values in found]

    yield from ordered_map(run, jobs, threads)


def normalised(F, box) -> tuple[slice, ...] | None:
    """``box`` as slices with explicit in-range starts and stops, or None when it is not a box of slices without
    steps (one per axis)."""
    if not isinstance(box, tuple) or len(box) != len(F.shape) or \
            not all(isinstance(s, slice) and s.step in (None, 1) for s in box):
        return None
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, F.shape))


def read_box(F, box: tuple[slice, ...], threads: int = 1) -> np.ndarray:
    """``F[box]`` for a zarr array F and a box of slices (one per axis, no steps): decoded here when ``layout``
    knows F's layout, else by zarr. ``threads``: shards decoded in parallel. Damaged data raises
    ``ShardReadError`` (or zarr's error)."""
    lay, normal = layout(F), normalised(F, box)
    if lay is None or normal is None:
        return F[box]
    box = normal
    out = np.full([max(s.stop - s.start, 0) for s in box], lay.fill, lay.dtype)
    if out.size:
        for _, found in decoded(lay, [(ix, box) for ix in shards_of(lay.shard, box)], threads):
            if isinstance(found, ShardReadError):
                raise found
            for region, values in found:
                out[tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, box))] = values
    return out.astype(F.dtype, copy=False)


def encode_shard(lay: Layout, values: np.ndarray) -> bytes | None:
    """The file of one shard holding ``values`` (the shard's shape; its part outside F is never read), or None
    when every inner chunk holds only the fill value (no file)."""
    import google_crc32c

    index = np.full(lay.per_shard + (2,), ABSENT, "<u8")
    parts, offset = [], 0
    for ix in np.ndindex(*lay.per_shard):
        chunk = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(ix, lay.chunk))]
        if np.all(chunk == lay.fill):
            continue
        data = lay.codec.encode(np.ascontiguousarray(chunk, lay.dtype).tobytes())
        index[ix] = offset, len(data)
        parts.append(data)
        offset += len(data)
    if not parts:
        return None
    raw = index.tobytes()
    return b"".join(parts) + raw + np.uint32(google_crc32c.value(raw)).tobytes()


def _within(index: tuple[int, ...], grid: tuple[int, ...], box: tuple[slice, ...]) -> tuple[slice, ...]:
    """The part of shard ``index`` (of shape ``grid``) inside ``box``, as slices of the box's array."""
    return tuple(slice(max(i * g, b.start) - b.start, min((i + 1) * g, b.stop) - b.start)
                 for i, g, b in zip(index, grid, box))


def write_box(F, box: tuple[slice, ...], values: np.ndarray) -> int:
    """``F[box] = values`` for a zarr array F: shard files encoded here when ``layout`` can write F and ``box``
    covers whole shards (each axis starts on the shard grid and stops on it or at F's edge), else by zarr (which
    also refuses a read-only F). Returns the number of shards of the box that hold a value other than the fill
    value (stored shards, when the box covers them whole)."""
    lay, normal = layout(F), normalised(F, box)
    aligned = lay is not None and normal is not None and not F.store_path.store.read_only and all(
        s.start % g == 0 and (s.stop % g == 0 or s.stop == n) and s.stop > s.start
        for s, g, n in zip(normal, lay.shard, lay.shape))
    if not aligned:
        F[box] = values
        normal = normalised(F, box)
        if normal is None:
            return int(np.any(np.asarray(values) != F.fill_value))
        values = np.broadcast_to(values, [s.stop - s.start for s in normal])
        grid = F.shards or F.chunks
        return sum(bool(np.any(values[_within(index, grid, normal)] != F.fill_value))
                   for index in shards_of(grid, normal))
    values = np.broadcast_to(np.asarray(values, lay.dtype), [s.stop - s.start for s in normal])
    stored = 0
    for index in shards_of(lay.shard, normal):
        part = _within(index, lay.shard, normal)
        shard = np.full(lay.shard, lay.fill, lay.dtype)
        shard[tuple(slice(0, p.stop - p.start) for p in part)] = values[part]
        data, path = encode_shard(lay, shard), lay.shard_path(index)
        if data is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        stored += 1
    return stored
