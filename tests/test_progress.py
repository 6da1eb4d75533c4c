"""Progress of dask graphs counts the calls the user asked for, not the graph's other tasks."""
import re
import sys

import dask

from pipeline import progress


def _inner(i):
    return i


def _call(i):
    sys.stderr.write("CALL\n")  # lands between the progress lines, in the order things happened
    return i


def test_dask_progress_counts_only_the_given_calls(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a line at every 10 % step
    # each call has an inner task of its own, as export's render tasks have their marker-writing finisher
    calls = [dask.delayed(_call)(dask.delayed(_inner)(i)) for i in range(10)]
    with progress.dask_progress("graph", calls, unit="tasks"):
        assert list(dask.compute(*calls, scheduler="sync")) == list(range(10))
    lines = capsys.readouterr().err.splitlines()
    calls_seen, counted = 0, []
    for line in lines:
        if line == "CALL":
            calls_seen += 1
        elif m := re.match(r"graph: (\d+)/10 tasks", line):
            counted.append(int(m.group(1)))
            assert int(m.group(1)) == calls_seen, lines  # a line never runs ahead of the finished calls
    assert counted == list(range(1, 10)), lines
    assert lines[-1].startswith("graph: done, 10 tasks"), lines
