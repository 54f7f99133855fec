"""Fixtures for the agents tests (helpers live in tests/agents/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents.helpers import finished_tiny_run, killed_copy


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Where a test's runs go (not created: a run that fails early must not create it either)."""
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def finished_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny run on the module's ``tiny_dir`` model: checkpoints at 64 and 128 steps, metrics
    up to 192 (one per module that asks for it)."""
    return finished_tiny_run(tiny_dir, tmp_path_factory.mktemp("finished"))


@pytest.fixture
def killed_run(finished_run: Path, tmp_path: Path) -> Path:
    """The finished run as if killed after its last rollout: no model.zip, no evaluation."""
    return killed_copy(finished_run, tmp_path)
