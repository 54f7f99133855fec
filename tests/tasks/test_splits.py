"""Deterministic sha256 hash splits. That growing a set moves no example is tested where a set can grow:
``tests/tasks/test_spec.py::test_adding_rows_moves_no_existing_id`` (a spec's data file gains rows)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from polar_rl.tasks import TaskError, hash_split
from polar_rl.tasks.splits import DEFAULT_RATIOS, canonical_split, check_ratios, hash_unit

IDS = [f"set/{i}" for i in range(20_000)]


def test_hash_unit_is_sha256_prefix() -> None:
    for example_id in ("arc_easy/Mercury_417466", "piqa/0", "ünï/cødé"):
        expected = int(hashlib.sha256(example_id.encode()).hexdigest()[:16], 16) / 2**64
        assert hash_unit(example_id) == expected
        assert 0.0 <= hash_unit(example_id) < 1.0


def test_pinned_assignments() -> None:
    # pinned values: a change here reshuffles every task's splits
    assert hash_unit("piqa/0") == pytest.approx(0.6149704906775348)
    assert hash_split("piqa/0") == "train"
    assert hash_split("toy/r0") == "test"  # u = 0.853 > 0.85
    assert hash_split("toy/r0", {"train": 0.8, "val": 0.2}) == "val"


def test_deterministic_across_processes_and_hash_seeds() -> None:
    code = (
        "from polar_rl.tasks import hash_split; print(''.join(hash_split(f'set/{i}')[0] for i in range(300)))"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
    assert outs == {"".join(hash_split(f"set/{i}")[0] for i in range(300)) + "\n"}


def test_ratios_are_respected() -> None:
    counts = Counter(hash_split(i) for i in IDS)
    assert set(counts) == {"train", "val", "test"}
    for name, ratio in DEFAULT_RATIOS.items():
        assert counts[name] / len(IDS) == pytest.approx(ratio, abs=0.015)
    two = Counter(hash_split(i, {"a": 0.25, "b": 0.75}) for i in IDS)
    assert two["a"] / len(IDS) == pytest.approx(0.25, abs=0.015)


def test_aliases() -> None:
    assert canonical_split("validation") == "val"
    assert canonical_split(" Dev ") == "val"
    assert canonical_split("TRAIN") == "train"
    assert check_ratios({"train": 0.5, "validation": 0.5}) == {"train": 0.5, "val": 0.5}
    assert hash_split("x/1", {"train": 0.5, "validation": 0.5}) in {"train", "val"}


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ({"train": 0.7, "val": 0.2}, "sum to 1"),
        ({"train": 1.2, "val": -0.2}, "'val'.*positive"),
        ({"train": "half", "val": 0.5}, "'train'.*positive"),
        ({"all": 1.0}, "reserved"),
        ({"val": 0.5, "validation": 0.5}, "given twice"),
        ({}, "empty"),
    ],
)
def test_bad_ratios(ratios: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        hash_split("x/1", ratios)
