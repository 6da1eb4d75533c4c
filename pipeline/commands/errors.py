"""One-line error messages for the command line."""
from __future__ import annotations

import errno

import click


def one_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name when the message is empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


#: errnos of a write the disk refused (full, over quota, read-only, too large, failing): raised by writers that
#: do not say which file they were writing
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


def click_error(err: BaseException, writing=None) -> click.ClickException:
    """A ClickException (exit 1, ``Error: <one line>``) for an error of bad input. ``writing``: the command's
    output (a path), named when the disk refused a write without the writer naming the file."""
    if (writing is not None and isinstance(err, OSError) and err.errno in STORAGE_ERRNOS
            and err.filename is None):
        return click.ClickException(f"{writing}: {err.strerror.lower()} while writing it (free some space and "
                                    f"rerun)")
    return click.ClickException(one_line(err))


def writable_file(path, what: str = "--out") -> None:
    """Fail early (ClickException, one line) when ``path`` cannot be written as a file: it is a folder, or its
    folder cannot be created or written. Creates the missing folders."""
    import os
    import uuid
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise click.ClickException(f"{what} {path} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        probe.write_bytes(b"")
        os.unlink(probe)
    except OSError as err:
        raise click.ClickException(f"{what} {path}: cannot write there ({err.strerror or one_line(err)})") from None


def out_of_memory(err: BaseException) -> bool:
    """Whether an error is an allocator's refusal: numpy's MemoryError, torch's CPU allocator (a RuntimeError
    "can't allocate memory" / "not enough memory") or CUDA's ``torch.OutOfMemoryError``."""
    text = str(err)
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or any(words in text for words in ("can't allocate memory", "not enough memory", "out of memory")))


def memory_error(err: BaseException, hint: str) -> click.ClickException:
    """A one-line ClickException for an allocator's refusal (``out_of_memory``), with what to do about it."""
    return click.ClickException(f"out of memory ({one_line(err)}); {hint}")

