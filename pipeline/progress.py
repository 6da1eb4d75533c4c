"""Progress of long work: a live bar on a terminal, sparse lines in logs.

Every long stage (compute, SVD, export, training, video, downloads) reports through ``progress(total, desc)``:

- on a terminal (the stream is a TTY) a tqdm bar is redrawn in place;
- elsewhere (a log file, a pipe, CI) a line is written when the stage starts, at most one more per 10 % of
  its work and per ``LOG_INTERVAL`` seconds, and a final line with the stage's wall time, so a long run writes a
  few lines, not thousands, and a short one just its first and last;
- ``enabled=False`` (``--quiet``) writes nothing.

Dask graphs report through ``dask_progress`` (local schedulers) or ``track_futures`` (a distributed client),
both feeding the same ``Progress``.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Iterable, Iterator

#: Lines written between the first and the last, at most, when the stream is not a terminal.
LOG_STEPS = 10
#: Seconds between two of those lines, at least.
LOG_INTERVAL = 5.0


def _is_terminal(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """Progress of one stage of ``total`` units (``update(n)`` after each piece of work; ``close()`` at the end).

    Use as a context manager. ``total`` may be None when unknown (then logs get only the first and last line).
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", enabled: bool = True,
                 stream: IO | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.perf_counter()
        self._bar = None
        self._logged_step = 0
        self._logged_at = self.started
        self._closed = False
        if not enabled:
            return
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream,
                             dynamic_ncols=True, mininterval=0.2)
        else:
            of = f" of {total}" if total is not None else ""
            self._write(f"{desc}: started, {initial}{of} {unit} done")
            self._logged_step = self._step()

    def _step(self) -> int:
        if not self.total:
            return 0
        return min(LOG_STEPS, self.n * LOG_STEPS // self.total)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        step, now = self._step(), time.perf_counter()
        if step > self._logged_step and self.n < (self.total or 0) and now - self._logged_at >= LOG_INTERVAL:
            self._logged_step, self._logged_at = step, now
            self._write(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total} %), "
                        f"{time.perf_counter() - self.started:.1f} s")

    def note(self, **values) -> None:
        """Show figures next to a terminal bar (e.g. a loss); ignored in logs."""
        if self._bar is not None:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()})

    def close(self) -> None:
        """End the stage: close the bar, or write the final line with the stage's time."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._write(f"{self.desc}: done, {self.n} {self.unit} in {time.perf_counter() - self.started:.1f} s")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, *, unit: str = "it", enabled: bool = True, initial: int = 0,
             stream: IO | None = None) -> Progress:
    """A ``Progress`` for a stage of ``total`` units (see the module docstring)."""
    return Progress(total, desc, unit=unit, enabled=enabled, initial=initial, stream=stream)


def iterate(items: Iterable, desc: str, *, total: int | None = None, unit: str = "it",
            enabled: bool = True) -> Iterator:
    """Yield ``items`` while reporting one unit per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update()


def dask_progress(desc: str, calls: list, *, unit: str = "task", enabled: bool = True):
    """A dask callback (for ``with``) that reports each finished delayed call of ``calls`` in a local-scheduler
    graph. Only those calls count: the graph's other tasks (their inputs, finalisers, a call's own inner
    delayed functions) do not, so the bar moves with the work the user asked for."""
    from dask.callbacks import Callback

    wanted = {call.key for call in calls}

    class _Callback(Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def _start(self, dsk):
            self.bar = progress(len(wanted), desc, unit=unit, enabled=enabled)

        def _posttask(self, key, result, dsk, state, worker_id):
            if key in wanted:
                self.bar.update()

        def _finish(self, dsk, state, errored):
            self.bar.close()

    return _Callback()


def track_futures(futures: list, desc: str, *, unit: str = "task", enabled: bool = True) -> None:
    """Report the futures of a distributed client as they finish (returns when all have)."""
    from distributed import as_completed

    with progress(len(futures), desc, unit=unit, enabled=enabled) as bar:
        for _ in as_completed(futures):
            bar.update()
