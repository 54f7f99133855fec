"""Fixtures for the agents tests (helpers live in tests/agents/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Where a test's runs go (not created: a run that fails early must not create it either)."""
    return tmp_path / "runs"
