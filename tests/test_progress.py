"""Progress of dask graphs counts the calls the user asked for (and those a resumed run did before), says how a
stage ended (done, stopped, failed), and a terminal that reports no size still gets a bar."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import dask
import pytest

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


def _fail_at(i, stop, error):
    if i == stop:
        raise error
    return _call(i)


@pytest.mark.parametrize("error, ended", [(KeyboardInterrupt(), "stopped"),
                                          (OSError(28, "No space left on device"), "failed")])
def test_an_interrupted_or_failed_graph_does_not_say_done(capsys, error, ended):
    calls = [dask.delayed(_fail_at)(i, 3, error) for i in range(10)]
    with pytest.raises(type(error)):
        with progress.dask_progress("graph", calls, unit="tasks"):
            dask.compute(*calls, scheduler="sync")
    lines = capsys.readouterr().err.splitlines()
    finished = lines.count("CALL")
    assert finished < 10 and lines[0] == "graph: started, 0 of 10 tasks done", lines
    assert re.fullmatch(rf"graph: {ended} after {finished} of 10 tasks in [0-9.]+ s"
                        + (r" \(OSError\)" if ended == "failed" else ""), lines[-1]), lines


def test_a_resumed_graph_counts_the_tasks_done_before(capsys):
    calls = [dask.delayed(_inner)(i) for i in range(4)]
    with progress.dask_progress("graph", calls, unit="tasks", done=12):
        dask.compute(*calls, scheduler="sync")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "graph: started, 12 of 16 tasks done", lines
    assert lines[-1].startswith("graph: done, 16 tasks in"), lines


BAR = "from pipeline.progress import progress\nwith progress(3, 'demo', unit='steps') as bar:\n    bar.update(3)\n"


def test_a_terminal_that_reports_no_size_still_shows_the_bar():
    """A pty of 0 rows and 0 columns (as ``script``, ``pty.spawn``, some CI runners and ``docker -t`` give)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-c", BAR], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child has closed the pty
            break
        if not data:
            break
        shown.extend(data)
    os.close(master)
    assert proc.wait() == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "demo: 100%" in text and "3/3" in text, repr(text)
    assert max(len(line) for line in re.split(r"[\r\n]+", text)) <= progress.FALLBACK_SIZE[0], repr(text)


def test_log_lines_end_with_the_latest_noted_figures(monkeypatch):
    import io

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    log = io.StringIO()
    with progress.Progress(4, "fit", unit="steps", stream=log) as bar:
        for loss in (0.5, 0.25, 0.125, 0.0625):
            bar.note(loss=loss, pairs="1/3")
            bar.update()
    lines = log.getvalue().splitlines()
    assert lines[1:-1] == [f"fit: {n}/4 steps ({25 * n} %), {t}, loss {loss}, pairs 1/3"
                           for n, t, loss in zip((1, 2, 3), [ln.split(", ")[1] for ln in lines[1:-1]],
                                                 ("0.5", "0.25", "0.125"))], lines


def test_log_lines_say_one_task_not_one_tasks():
    import io

    stream = io.StringIO()
    with progress.progress(1, "store", unit="tasks", stream=stream) as bar:
        bar.update()
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0], lines[-1]] and lines[0] == "store: started, 0 of 1 task done", lines
    assert re.fullmatch(r"store: done, 1 task in [0-9.]+ s", lines[-1]), lines
    stream = io.StringIO()
    with progress.progress(None, "frames", unit="frames", stream=stream) as bar:
        bar.update()
    assert re.fullmatch(r"frames: done, 1 frame in [0-9.]+ s", stream.getvalue().splitlines()[-1])
    assert progress.counted(2, "tasks") == "tasks" and progress.counted(1, "it") == "it"
