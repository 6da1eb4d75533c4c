"""pipeline.shard_io: reads of F decoded from the shard files equal zarr's reads exactly, for every box
(absent shards and inner chunks included, exact and compact encodings, one or two threads); other layouts and
other indices go through zarr; damaged files raise one error naming the shard and inner chunk."""
import numpy as np
import pytest
import zarr

from pipeline import shard_io
from pipeline.shard_io import ShardReadError, layout, read_box, write_box
from pipeline.store import create_store, layout as store_layout, open_store


def sparse_store(path, dtype="float32", in_shape=(3, 12, 12), scale=2, tile=4, seed=0):
    """A store whose F holds random values in some inner chunks (2×2×2×2 a shard) of some shards (the rest
    absent)."""
    rng = np.random.default_rng(seed)
    c, h, w = in_shape
    x0 = rng.random(in_shape, dtype=np.float32)
    y0 = rng.random((c, h * scale, w * scale), dtype=np.float32)
    shards, _, tasks = store_layout(in_shape, y0.shape, tile)
    chunks = shards[:1] + tuple(n // 2 for n in shards[1:3]) + shards[3:4] + tuple(n // 2 for n in shards[4:])
    store = create_store(path, identity={"model": "m"}, attrs={"scale": scale}, x0=x0, y0=y0, residual=y0,
                         shards=shards, chunks=chunks, tasks=tasks, dtype=dtype)
    F = np.zeros(store.F.shape, np.float32)
    grid = [range(0, n, k) for n, k in zip(F.shape, chunks)]
    for start in np.ndindex(*[len(g) for g in grid]):
        if rng.random() < 0.4:  # about 40 % of the inner chunks stored
            box = tuple(slice(g[i], g[i] + k) for g, i, k in zip(grid, start, chunks))
            F[box] = rng.standard_normal(F[box].shape)
    F[:, :, :, :, 8:, 8:] = 0  # a whole input tile without any stored shard
    store.F[...] = F.astype(store.F.dtype)
    return open_store(path)


def random_boxes(shape, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        box = []
        for size in shape:
            lo = int(rng.integers(0, size))
            box.append(slice(lo, int(rng.integers(lo + 1, size + 1))))
        yield tuple(box)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_reads_equal_zarr_reads(tmp_path, dtype):
    store = sparse_store(tmp_path / "s.zarr", dtype)
    F = store.F
    assert layout(F) is not None and np.prod(layout(F).per_shard) == 16
    boxes = list(random_boxes(F.shape, 40, 1)) + [(slice(None),) * 6, tuple(slice(0, n) for n in F.shape),
                                                  (slice(0, 3), slice(2, 17), slice(5, 6), slice(0, 3), slice(3, 11),
                                                   slice(0, 12)), (slice(None),) * 4 + (slice(8, 12),) * 2]
    for box in boxes:
        want = F[box]
        for threads in (1, 2):
            got = read_box(F, box, threads)
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), box
    assert not read_box(F, (slice(None),) * 4 + (slice(8, 12),) * 2).any()  # absent shards: zeros


def test_other_layouts_and_indices_go_through_zarr(tmp_path):
    store = sparse_store(tmp_path / "s.zarr")
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(6, 5), chunks=(2, 2), dtype="float32")
    plain[...] = np.arange(30, dtype=np.float32).reshape(6, 5)
    assert layout(plain) is None
    assert np.array_equal(read_box(plain, (slice(1, 5), slice(0, 3))), plain[1:5, 0:3])
    for index in ((0, 1, 2), (slice(None, None, 2),) * 6, (slice(None),) * 5):
        assert np.array_equal(read_box(store.F, index), store.F[index])


def damaged(store, how):
    region = max(store.stored_shards(), key=lambda r: (store.path / store.shard_key(r)).stat().st_size)
    path = store.path / store.shard_key(region)
    data = bytearray(path.read_bytes())
    if how == "chunk":
        for i in range(40, 60):  # inside the first inner chunk's compressed bytes
            data[i] ^= 0x5A
    elif how == "index":
        data[-10] ^= 0x01
    else:
        data = data[:10]
    path.write_bytes(bytes(data))
    return region, store.shard_key(region)


@pytest.mark.parametrize("how, message", [("chunk", r"inner chunk \(0, 0, 0, 0, 0, 0\) does not decode"),
                                          ("index", "does not match its CRC32C"),
                                          ("truncated", "shorter than its index")])
def test_damaged_shards_raise_one_error_naming_them(tmp_path, how, message):
    store = sparse_store(tmp_path / "s.zarr")
    region, key = damaged(store, how)
    with pytest.raises(ShardReadError, match=message) as err:
        read_box(store.F, region)
    assert key.removeprefix("F/") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(Exception):  # zarr refuses the same data
        store.F[region]
    lay = layout(store.F)
    jobs = [(tuple(s.start // g for s, g in zip(r, lay.shard)), r) for r in store.stored_shards()]
    failed = [job[1] for job, found in shard_io.decoded(lay, jobs, threads=2) if isinstance(found, ShardReadError)]
    assert failed == [region]


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # zstd, and blosc with bit shuffle (compact stores)
def test_writes_of_whole_shards_read_back_in_zarr_and_match_zarrs_own_files(tmp_path, dtype):
    ours, theirs = (open_store(sparse_store(tmp_path / name, dtype).path, mode="r+")
                    for name in ("ours.zarr", "theirs.zarr"))
    with pytest.raises(ValueError, match="read-only"):
        write_box(open_store(ours.path).F, (slice(None),) * 6, 0.0)
    rng = np.random.default_rng(3)
    for box in [(slice(None), slice(0, 8), slice(0, 16), slice(None), slice(0, 4), slice(4, 12)),
                (slice(None), slice(8, 24), slice(0, 24), slice(None), slice(4, 12), slice(0, 12)),
                (slice(None),) * 6]:
        values = rng.standard_normal(ours.F[box].shape).astype(ours.F.dtype)
        values[:, :, :, :, :, :2] = 0  # whole inner chunks of zeros: left out, as zarr leaves them out
        stored = write_box(ours.F, box, values)
        theirs.F[box] = values
        assert stored == len([r for r in ours.stored_shards()
                              if all(s.start >= b.start and s.stop <= b.stop for s, b in zip(r, shard_io.normalised(ours.F, box)))])
        assert np.array_equal(zarr.open_array(tmp_path / "ours.zarr" / "F", mode="r")[...], theirs.F[...])
        assert [r for r in ours.stored_shards()] == [r for r in theirs.stored_shards()]
        for region in ours.stored_shards():  # the same inner chunks stored in each shard
            lay = layout(ours.F)
            index = tuple(s.start // g for s, g in zip(region, lay.shard))
            found = [shard_io.shard_index(layout(s.F), index)[..., 0] != shard_io.ABSENT for s in (ours, theirs)]
            assert np.array_equal(*found)
    write_box(ours.F, (slice(None),) * 6, 0.0)  # all zeros: no shard files left
    assert ours.stored_shards() == [] and not list((tmp_path / "ours.zarr" / "F").rglob("*.partial"))


def test_unaligned_writes_go_through_zarr(tmp_path):
    store = open_store(sparse_store(tmp_path / "s.zarr").path, mode="r+")
    before = store.F[...]
    box = (slice(None), slice(3, 10), slice(0, 8), slice(None), slice(1, 4), slice(0, 4))
    values = np.full(store.F[box].shape, 2.5, np.float32)
    values[:, 4:] = 0  # the box meets 2 shards along y_out: one of them gets only zeros
    assert write_box(store.F, box, values) == 1
    before[box] = values
    assert np.array_equal(store.F[...], before)
