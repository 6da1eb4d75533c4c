"""Ordered maps over a small shared pool of threads, for work that releases the GIL (decoding, compressing).

``ordered_map(fn, items, threads)`` yields ``fn(item)`` in the order of ``items``, computing at most ``2·threads``
results ahead of the consumer, so that memory stays bounded by that many results however long ``items`` is.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POOL: ThreadPoolExecutor | None = None


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool, grown when more threads are asked for."""
    global _POOL
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001 - the pool's size, to grow it
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="linterp")
    return _POOL


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int = 1) -> Iterator[R]:
    """``fn(item)`` for each item, in order; with ``threads`` > 1 computed in parallel, at most 2·threads ahead.
    An exception raised by ``fn`` is raised here, when its result's turn comes."""
    if threads <= 1:
        yield from map(fn, items)
        return
    pool, pending = _pool(threads), deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > 2 * threads:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
