"""Atomic file writes (a half-written file never looks complete), JSON writers and file-name slugs.

Files and folders put in place here get the permissions the user's umask gives a new file or folder
(0644 / 0755 under umask 022), never the 0600 / 0700 of ``tempfile``'s private temporaries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np


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
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` sets it,
    which would briefly give other threads' new files the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def temp_folder(target: str | Path) -> Path:
    """A new, private, uniquely named folder beside ``target`` to build it in (for :func:`replace_folder`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


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
    complete. ``tmp`` gets the umask's folder mode first (``mkdtemp`` makes it 0700). An old ``target``
    is renamed aside and removed only after the new one is in place; if the final rename fails it is
    put back and the OSError raised. Another process moving the old one away meanwhile is fine."""
    tmp, target = Path(tmp), Path(target)
    os.chmod(tmp, 0o777 & ~umask())
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        with suppress(FileNotFoundError):
            target.rename(aside / target.name)
    try:
        tmp.rename(target)
    except BaseException:
        if aside is not None and (aside / target.name).exists() and not target.exists():
            (aside / target.name).rename(target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)


def slug(text: str) -> str:
    """A file-name-safe version of a task or model name (``configs/tasks/x.yaml`` -> ``x``)."""
    base = Path(text).stem if text.endswith((".yaml", ".yml")) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "x"


def to_jsonable(value: Any) -> Any:
    """Plain JSON data from numpy scalars/arrays, tuples and non-finite floats (-> null)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: Any) -> Path:
    with atomic_open(path) as f:
        json.dump(to_jsonable(data), f, indent=2)
        f.write("\n")
    return Path(path)


def write_jsonl_atomic(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(to_jsonable(row)) + "\n")
    return Path(path)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
