"""Fixtures for task tests: tiny data files written into tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

Rows = Sequence[dict[str, Any]]


def _write_jsonl(path: Path, rows: Rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _toy_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "qid": f"r{i}",
            "question": f"What is {i} + 1?",
            "choices": [str(i), str(i + 1), str(i + 2)],
            "key": "B",
        }
        for i in range(start, start + n)
    ]


@pytest.fixture
def write_jsonl() -> Callable[[Path, Rows], Path]:
    """Write rows as JSON lines to a path and return it."""
    return _write_jsonl


@pytest.fixture
def toy_rows() -> Callable[..., list[dict[str, Any]]]:
    """toy_rows(n, start=0): well-formed rows (qid, question, 3 choices, letter gold "B")."""
    return _toy_rows


@pytest.fixture
def toy_spec(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """toy_spec(rows=None, name="toy", **overrides): a spec dict over a jsonl written into tmp_path.

    An override set to None removes that key.
    """

    def make(rows: Rows | None = None, name: str = "toy", **overrides: Any) -> dict[str, Any]:
        path = _write_jsonl(tmp_path / f"{name}.jsonl", _toy_rows(40) if rows is None else rows)
        spec: dict[str, Any] = {
            "name": name,
            "source": {"path": str(path)},
            "id_column": "qid",
            "context": "Question: {question}\nAnswer:",
            "choices": {"column": "choices"},
            "gold": {"column": "key", "type": "letter"},
        }
        spec.update(overrides)
        return {k: v for k, v in spec.items() if v is not None}

    return make
