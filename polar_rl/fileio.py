"""Atomic file writes: a half-written file never looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a uniquely named temp file in the same folder, fsync it, ``os.replace`` it onto
    ``path`` and fsync the folder: after return the file is on disk whole, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def replace_folder(tmp: str | Path, target: str | Path) -> None:
    """Put the finished folder ``tmp`` at ``target`` by rename: a half-written folder never looks
    complete. An old ``target`` is renamed aside first and removed after, never deleted in place; if
    another process moved it away meanwhile, that is fine. Raises OSError if the final rename fails."""
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        with suppress(FileNotFoundError):
            target.rename(old / target.name)
    try:
        tmp.rename(target)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
