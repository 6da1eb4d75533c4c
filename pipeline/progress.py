"""Progress of long work: a live bar on a terminal, sparse lines in logs.

Every long stage (compute, SVD, export, training, video, downloads) reports through ``progress(total, desc)``:

- on a terminal (the stream is a TTY) a tqdm bar is redrawn in place, as wide as the terminal, or for a
  terminal of ``FALLBACK_SIZE`` where it reports no size (0 columns or rows: some ptys, CI runners, docker -t;
  tqdm's own measure then draws nothing);
- elsewhere (a log file, a pipe, CI) a line is written when the stage starts, at most one more per 10 % of
  its work and per ``LOG_INTERVAL`` seconds, and a final line with the stage's wall time that says how it
  ended (done, stopped by an interrupt, or failed), so a long run writes a few lines, not thousands, and a short
  one just its first and last;
- ``enabled=False`` (``--quiet``) writes nothing.

Dask graphs report through ``dask_progress`` (local schedulers) or ``track_futures`` (a distributed client),
both feeding the same ``Progress``. Units are plural nouns ("tasks", "steps").
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Iterable, Iterator

#: Lines written between the first and the last, at most, when the stream is not a terminal.
LOG_STEPS = 10
#: Seconds between two of those lines, at least.
LOG_INTERVAL = 5.0
#: (columns, rows) of a terminal that reports no size, for its bars.
FALLBACK_SIZE = (80, 24)


def _is_terminal(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _terminal_size(stream: IO) -> tuple[int, int]:
    """(columns, rows) of the terminal of ``stream``; 0 for what it does not report."""
    try:
        return tuple(os.get_terminal_size(stream.fileno()))
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal's
        return (0, 0)


class Progress:
    """Progress of one stage of ``total`` units (``update(n)`` after each piece of work; ``close()`` at the end).

    Use as a context manager: an exception that leaves the ``with`` block ends the stage as stopped or failed
    (see ``close``). ``total`` may be None when unknown (then logs get only the first and last line); ``initial``
    units were done before (a resumed run).
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
        self._noted: dict = {}  # the latest figures of `note`
        if not enabled:
            return
        if _is_terminal(self.stream):
            from tqdm import tqdm

            columns, rows = _terminal_size(self.stream)
            if columns and rows:
                sized = {"dynamic_ncols": True}
            else:  # tqdm would measure 0 columns or -1 rows, and draw nothing
                sized = {"ncols": columns or FALLBACK_SIZE[0], "nrows": rows or FALLBACK_SIZE[1]}
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream, mininterval=0.2,
                             **sized)
        else:
            of = f" of {total}" if total is not None else ""
            self._write(f"{desc}: started, {initial}{of} {counted(initial if total is None else total, unit)} done")
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
            noted = "".join(f", {k} {v}" for k, v in self._noted.items())
            self._write(f"{self.desc}: {self.n}/{self.total} {counted(self.total, self.unit)} "
                        f"({100 * self.n // self.total} %), "
                        f"{time.perf_counter() - self.started:.1f} s{noted}")

    def note(self, **values) -> None:
        """Show figures next to a terminal bar (e.g. a loss); in logs, the latest ones end the next progress
        line."""
        self._noted = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self._noted)

    def close(self, error: BaseException | None = None) -> None:
        """End the stage: close the bar, or write the final line with the stage's time and how it ended: "done"
        without ``error``; "stopped after n of total" for an interrupt (``KeyboardInterrupt`` and the other
        exceptions that are not ``Exception``s); "failed after n of total (its type)" for any other ``error``.
        Only the first call counts."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        seconds = f"in {time.perf_counter() - self.started:.1f} s"
        if error is None:
            self._write(f"{self.desc}: done, {self.n} {counted(self.n, self.unit)} {seconds}")
            return
        of = f" of {self.total}" if self.total is not None else ""
        unit = counted(self.n if self.total is None else self.total, self.unit)
        if isinstance(error, Exception):
            self._write(f"{self.desc}: failed after {self.n}{of} {unit} {seconds} ({type(error).__name__})")
        else:
            self._write(f"{self.desc}: stopped after {self.n}{of} {unit} {seconds}")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, error, traceback) -> None:
        self.close(error)


def counted(n: int, unit: str) -> str:
    """``unit`` (a plural noun such as "tasks", or "it") as it reads after the number ``n``: "1 task", "2 tasks"."""
    return unit[:-1] if n == 1 and len(unit) > 1 and unit.endswith("s") else unit


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


def dask_progress(desc: str, calls: list, *, unit: str = "tasks", enabled: bool = True, done: int = 0):
    """A dask callback (for ``with``) that reports each finished delayed call of ``calls`` in a local-scheduler
    graph, as one of ``done + len(calls)`` (``done``: finished by an earlier run). Only those calls count: the
    graph's other tasks (their inputs, finalisers, a call's own inner delayed functions) do not, so the bar moves
    with the work the user asked for. A graph that fails or is interrupted ends the stage as such when the
    ``with`` block exits."""
    from dask.callbacks import Callback

    wanted = {call.key for call in calls}

    class _Callback(Callback):
        def __init__(self):
            super().__init__()
            self.bar = None

        def _start(self, dsk):
            self.bar = progress(len(wanted) + done, desc, unit=unit, enabled=enabled, initial=done)

        def _posttask(self, key, result, dsk, state, worker_id):
            if key in wanted:
                self.bar.update()

        def _finish(self, dsk, state, errored):
            if not errored:  # else __exit__, which knows the exception, closes the bar
                self.bar.close()

        def __exit__(self, exc_type, error, traceback):
            super().__exit__(exc_type, error, traceback)
            if self.bar is not None:
                self.bar.close(error)

    return _Callback()


def track_futures(futures: list, desc: str, *, unit: str = "tasks", enabled: bool = True, done: int = 0) -> None:
    """Report the futures of a distributed client as they finish, as ``done + len(futures)`` tasks (``done``:
    finished by an earlier run); returns when all have."""
    from distributed import as_completed

    with progress(len(futures) + done, desc, unit=unit, enabled=enabled, initial=done) as bar:
        for _ in as_completed(futures):
            bar.update()
