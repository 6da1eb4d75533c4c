"""Parallel work: ordered maps over a small shared pool of threads, and dask graphs on a scheduler.

``ordered_map(fn, items, threads)`` yields ``fn(item)`` in the order of ``items``, computing at most ``2·threads``
results ahead of the consumer, so that memory stays bounded by that many results however long ``items`` is.

``compute_delayed(calls, scheduler, ...)`` evaluates dask delayed calls on a local scheduler or a distributed
client, reporting each finished call through ``pipeline.progress``. Its worker processes (the "processes"
scheduler) take one task at a time and exit when the process that started them dies (``exit_with_parent``), so
a killed run leaves no workers behind.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Local dask schedulers that take no worker count.
SERIAL = ("sync", "synchronous")

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


def exit_with_parent() -> None:
    """Initializer of worker processes: end this process as soon as its parent has ended.

    A daemon thread waits on ``multiprocessing.parent_process()``'s sentinel (a pipe the parent holds on POSIX,
    its process handle on Windows) and calls ``os._exit`` when it fires. Without it, the workers of a killed
    (SIGKILL, OOM) run are re-parented, finish the tasks they hold and then wait for more forever, each with its
    interpreter in memory. Nothing happens in a process that multiprocessing did not start.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="linterp-exit-with-parent", daemon=True).start()


def compute_delayed(calls: list, scheduler, workers: int | None = None, *, desc: str, progress: bool = True,
                    done: int = 0) -> list:
    """The results of dask delayed ``calls``, in order, each finished call reported through ``pipeline.progress``
    under ``desc`` as one of ``done + len(calls)`` tasks (``done``: tasks finished by an earlier run).

    ``scheduler``: a local dask scheduler ("threads", "processes", "sync"/"synchronous"; ``workers`` threads or
    processes, default one per core) or a ``distributed.Client``. The "processes" scheduler hands out one task at
    a time (dask's default chunks of 6 made progress jump by 12 and an interrupt wait for whole chunks) to
    workers that end with this process (``exit_with_parent``).
    """
    from .progress import dask_progress, track_futures

    if not calls:
        return []
    if not isinstance(scheduler, str):
        futures = scheduler.compute(calls)
        track_futures(futures, desc, unit="tasks", enabled=progress, done=done)
        return scheduler.gather(futures)
    import dask

    options = {"scheduler": scheduler}
    if workers and scheduler not in SERIAL:
        options["num_workers"] = workers
    if scheduler == "processes":
        options.update(chunksize=1, initializer=exit_with_parent)
    with dask_progress(desc, calls, unit="tasks", enabled=progress, done=done):
        return list(dask.compute(*calls, **options))
