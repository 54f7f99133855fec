"""Deterministic hash splits.

Every example has a stable id (``"<task>/<native id>"``). Its split is a pure function of that id:
``u = int(sha256(id)[:16 hex]) / 2**64`` in [0, 1), then the first split whose cumulative ratio
exceeds ``u`` (in the order the ratios are given). Growing a set therefore never moves an existing
example to another split, and Python's salted ``hash()`` is never involved.

Split rule for the built-in tasks:

* a set with an official test split (``arc_easy``, ``arc_challenge``, ``openbookqa``): ``test`` is the
  official test set; the validation set is split 80/20 by hash into ``train`` / ``val``;
* a set with only a validation split (``piqa``, ``boolq``, ``hellaswag``): split 70/15/15 by hash into
  ``train`` / ``val`` / ``test``;
* ``gsm8k`` ships only its test set: split 70/15/15 by hash the same way.

Split ``"all"`` means every example; ``"validation"`` (also ``"valid"``, ``"dev"``) means ``"val"``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from polar_rl.config import shorten
from polar_rl.tasks.examples import TaskError

DEFAULT_RATIOS: Mapping[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
HELDOUT_RATIOS: Mapping[str, float] = {"train": 0.8, "val": 0.2}  # validation set of a set with official test
ALL = "all"
SPLIT_ALIASES: Mapping[str, str] = {"validation": "val", "valid": "val", "dev": "val"}


def hash_unit(example_id: str) -> float:
    """Map an id to a uniform float in [0, 1) via sha256 (stable across processes and machines)."""
    digest = hashlib.sha256(example_id.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2.0**64


def check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Validate split ratios (positive, summing to 1) and canonicalise their names."""
    if not ratios:
        raise TaskError("split ratios are empty")
    out: dict[str, float] = {}
    for name, r in ratios.items():
        key = canonical_split(str(name))
        if key == ALL:
            raise TaskError(f"'{ALL}' is reserved and cannot be a split ratio name")
        if key in out:
            raise TaskError(f"split {shorten(name)} given twice in ratios {shorten(dict(ratios))}")
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or r <= 0:
            raise TaskError(f"split ratio for {shorten(name)} must be a positive number, got {shorten(r)}")
        out[key] = float(r)
    if abs(sum(out.values()) - 1.0) > 1e-6:
        raise TaskError(f"split ratios must sum to 1, got {sum(out.values())} from {shorten(dict(ratios))}")
    return out


def canonical_split(split: str) -> str:
    """Lower-case a split name and resolve aliases (``validation`` -> ``val``)."""
    key = split.strip().lower()
    return SPLIT_ALIASES.get(key, key)


def hash_split(example_id: str, ratios: Mapping[str, float] = DEFAULT_RATIOS) -> str:
    """Return the split name that ``example_id`` falls into under ``ratios``."""
    ratios = check_ratios(ratios)
    u = hash_unit(example_id)
    acc = 0.0
    for name, r in ratios.items():
        acc += r
        if u < acc:
            return name
    return name  # u within float rounding of 1.0: last split
