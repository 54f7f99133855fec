"""Trust: caches that cannot lie, runs that cannot be lost, inputs that are not coerced (issue 10).

Each test reproduces one defect class with a tiny random model (a local folder with a byte-level
tokenizer) and asserts what is, and is not, left on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from polar_rl.agents.reference_store import ReferenceStore, reference_store
from polar_rl.config import EnvConfig
from polar_rl.envs.engine import LockstepEngine, Reference
from polar_rl.tasks.examples import MCExample, Task
from tests.agents.helpers import REPO, tiny_model_dir

EXAMPLE_SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tinymodel")


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path):
    from polar_rl import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder (never the user's)."""
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _task(examples: list[MCExample]) -> Task:
    return Task("toy", "test", "multiple_choice", tuple(examples))


def _examples() -> list[MCExample]:
    return [MCExample(f"toy/q{i}", f"Question: what comes after {i}?\nAnswer:", (f" {i + 1}", f" {i + 7}", " no"), 0)
            for i in range(4)]


def _full_reference(lm, task: Task, reference: dict[str, Reference]) -> dict[str, Reference]:
    """Run the engine's full-model pass over ``task`` with ``reference`` as the starting cache."""
    engine = LockstepEngine(lm, task, EnvConfig(block_size=1, n_envs=len(task)), shuffle=False, reference=reference)
    engine.reset()
    return engine.reference


# ---- 1. caches that can lie -------------------------------------------------------------------


def test_reference_cache_recomputes_an_example_whose_content_changed(tiny_lm) -> None:
    """The defect: editing a task's data under the same name reused the full model's old results."""
    task = _task(_examples())
    store = reference_store(tiny_lm, task, "float32")
    ref = _full_reference(tiny_lm, task, store.load())
    assert store.save(ref)
    assert store.load() == ref  # unchanged data: everything is reused

    edited = _examples()
    edited[1] = dataclasses.replace(edited[1], gold=2)  # same id, other gold
    edited[2] = dataclasses.replace(edited[2], context="Question: something else entirely?\nAnswer:")
    edited[3] = dataclasses.replace(edited[3], choices=(" x", " y", " z"))
    new_task = _task(edited)
    new_store = reference_store(tiny_lm, new_task, "float32")
    kept = new_store.load()
    assert set(kept) == {"toy/q0"} and new_store.stale == 3
    fresh = _full_reference(tiny_lm, new_task, {})
    assert _full_reference(tiny_lm, new_task, kept) == fresh
    assert fresh["toy/q1"] != ref["toy/q1"]  # gold moved: the old value would have been wrong
    new_store.save(fresh)
    assert reference_store(tiny_lm, new_task, "float32").load() == fresh


def test_reference_cache_is_keyed_by_the_scoring_rule(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    import polar_rl.agents.reference_store as rs

    task = _task(_examples())
    reference_store(tiny_lm, task, "float32").save(_full_reference(tiny_lm, task, {}))
    monkeypatch.setattr(rs, "SCORING", rs.SCORING + " (changed)")
    assert reference_store(tiny_lm, task, "float32").load() == {}


def test_reference_cache_that_cannot_be_written_warns(cache: Path, capsys, monkeypatch) -> None:
    import polar_rl.agents.reference_store as rs

    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rs, "write_json_atomic", read_only)  # as root, chmod cannot make a folder read-only
    store = ReferenceStore("x", _task(_examples()), root=cache)
    assert store.save({"toy/q0": Reference(True, 1.0, -0.1)}) is False
    store.save_seconds(0.5)
    out = capsys.readouterr().out
    assert out.count("warning: could not write the reference cache") == 2 and "Permission denied" in out
