"""Action masks: which of SKIP / EXECUTE / LOOP a block may take.

One rule set shared by the environment (training and evaluation) and the serving runtime, so a
policy is masked the same way wherever it runs:

- ``always_execute``: SKIP is masked on these blocks;
- ``max_loops``: LOOP is masked once a program has used that many loops;
- ``max_compute_fraction``: EXECUTE / LOOP are masked when they would exceed the budget of layer
  calls (a fraction of one full pass), keeping room for the ``always_execute`` blocks still ahead.

A block whose every action is masked (a forced block over budget) still executes once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polar_rl.program import Action

NUM_ACTIONS = len(Action)


@dataclass(frozen=True)
class MaskRules:
    """The masking settings of one environment (or export) and the model's layer layout."""

    num_layers: int
    block_size: int = 1
    loop_runs: int = 2
    always_execute: frozenset[int] = field(default_factory=frozenset)
    max_loops: int | None = None
    max_compute_fraction: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "always_execute", frozenset(int(b) for b in self.always_execute))

    def problem(self) -> str | None:
        """Why these settings cannot hold for the model (an ``always_execute`` block out of range, or
        more forced blocks than the budget allows), or None; the environment and the manifest check ask."""
        num_blocks = self.num_layers // self.block_size
        bad = sorted(b for b in self.always_execute if not 0 <= b < num_blocks)
        if bad:
            return f"always_execute blocks {bad} out of range 0..{num_blocks - 1}"
        forced = len(self.always_execute) * self.block_size / self.num_layers
        if self.max_compute_fraction is not None and forced > self.max_compute_fraction + 1e-9:
            return (f"always_execute={sorted(self.always_execute)} forces {len(self.always_execute)} of {num_blocks} "
                    f"blocks (compute fraction {forced:.3f}), more than max_compute_fraction="
                    f"{self.max_compute_fraction}; raise the budget or execute fewer blocks")
        return None

    def masks(self, block: int, calls: Sequence[float] | np.ndarray, loops: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N, 3) bool for N programs standing at ``block`` with ``calls`` layer calls and ``loops`` loops so far."""
        calls, loops = np.asarray(calls, dtype=float), np.asarray(loops)
        bs = self.block_size
        masks = np.ones((calls.shape[0], NUM_ACTIONS), dtype=bool)
        if block in self.always_execute:
            masks[:, Action.SKIP] = False
        if self.max_loops is not None:
            masks[loops >= self.max_loops, Action.LOOP] = False
        if self.max_compute_fraction is not None:
            budget = self.max_compute_fraction * self.num_layers
            forced_after = sum(1 for x in self.always_execute if x > block) * bs  # reserved for later blocks
            room = budget - calls - forced_after
            masks[room < bs - 1e-9, Action.EXECUTE] = False
            masks[room < self.loop_runs * bs - 1e-9, Action.LOOP] = False
        masks[~masks.any(axis=1), Action.EXECUTE] = True  # a forced block over budget still executes once
        return masks

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers, "block_size": self.block_size, "loop_runs": self.loop_runs,
            "always_execute": sorted(self.always_execute), "max_loops": self.max_loops,
            "max_compute_fraction": self.max_compute_fraction,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskRules:
        return cls(
            num_layers=int(d["num_layers"]), block_size=int(d["block_size"]), loop_runs=int(d["loop_runs"]),
            always_execute=frozenset(d.get("always_execute") or ()), max_loops=d.get("max_loops"),
            max_compute_fraction=d.get("max_compute_fraction"),
        )


def masked_argmax(logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 3) logits and bool masks -> (N,) the likeliest allowed action (deterministic decoding)."""
    return np.where(masks, logits, -np.inf).argmax(axis=1)
