"""Atomic file replacement: readers see the old file or the new one, never a torn or empty one.

The data goes to a temporary file in the target's directory (os.replace is atomic only within one
file system), is fsync'd, renamed over the target, and the directory is fsync'd so the rename itself
survives a crash. On any error the temporary file is removed and the target is left as it was.
These calls block: run them on a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_writer", "fsync_directory"]

DEFAULT_MODE = 0o600  # new files (sync position, exports of the suppression list, mail) are private


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], *, mode: int | None = None, text: bool = False, **open_args: Any
) -> Iterator[IO[Any]]:
    """A file object for the new content of `path`; it replaces `path` when the block ends normally.

    `text=True` opens it in text mode (pass encoding/newline in open_args). If the block raises, the
    temporary file is removed and `path` is untouched. `mode`: the new file's permission bits; by
    default those of the file it replaces (as rewriting it in place would keep them), else 0600.
    """
    target = Path(path)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = DEFAULT_MODE
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600
        with os.fdopen(fd, "w" if text else "wb", **open_args) as file:
            fd = -1  # owned by the file object now
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data`, atomically and durably (see the module docstring)."""
    with atomic_writer(path, mode=mode) as file:
        file.write(data)
