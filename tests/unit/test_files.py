"""relay.files: atomic replacement, checked by behaviour on a real file system."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relay import files
from relay.files import atomic_write, atomic_writer


class Boom(Exception):
    pass


def leftovers(directory: Path, keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


def test_atomic_write_creates_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path, "state") == []


def test_atomic_write_replaces_and_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "backup.csv"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    atomic_write(target, b"newer", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path, "backup.csv") == []


def test_an_error_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "backup.csv"
    target.write_bytes(b"last good backup\n")
    with pytest.raises(Boom), atomic_writer(target, text=True, encoding="utf-8") as out:
        out.write("half of a new export")
        raise Boom
    assert target.read_bytes() == b"last good backup\n"
    assert leftovers(tmp_path, "backup.csv") == []


def test_a_failing_fsync_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path, "state") == []


def test_the_file_and_then_its_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the directory fsync a crash can lose the rename (the old dry-run and sync writers differed)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    atomic_write(tmp_path / "state", b"data")
    assert synced == ["file", "dir"]


def test_text_mode_keeps_newlines_as_written(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with atomic_writer(target, text=True, encoding="utf-8", newline="") as out:
        out.write("a,b\r\nc,d\n")
    assert target.read_bytes() == b"a,b\r\nc,d\n"


def test_a_missing_directory_is_an_os_error_not_a_partial_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no-such-dir" / "state", b"data")
    assert list(tmp_path.iterdir()) == []
