"""Atomic writes: a reader sees the old file or folder or the new one, never a half-written one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from polar_rl.fileio import atomic_open, replace_folder, sha256, write_text_atomic


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "one\n")
    write_text_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "a.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _folder(root: Path, name: str, text: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "f.txt").write_text(text)
    return folder


def test_replace_folder_puts_the_new_folder_in_place_of_the_old(tmp_path: Path) -> None:
    target = _folder(tmp_path, "out", "old")
    (target / "stale.txt").write_text("only in the old export")
    replace_folder(_folder(tmp_path, ".tmp-1", "new"), target)
    assert sorted(p.name for p in target.iterdir()) == ["f.txt"]  # nothing of the old folder is mixed in
    assert (target / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old copy and the temp are gone
    replace_folder(_folder(tmp_path, ".tmp-2", "first"), tmp_path / "fresh")  # no old folder
    assert (tmp_path / "fresh" / "f.txt").read_text() == "first"


def test_replace_folder_raises_when_the_new_folder_is_missing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        replace_folder(tmp_path / "never-written", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [0, 1, 1 << 20, (5 << 20) + 3])  # empty, one byte, past hashlib's chunks
def test_sha256_of_a_file_is_the_sha256_of_its_bytes(tmp_path: Path, size: int) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256(path) == sha256(str(path)) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data + b"!")
    assert sha256(path) != hashlib.sha256(data).hexdigest()
