"""Programs of layers: how many times each block of consecutive layers runs.

A program splits the ``num_layers`` layers of a model into blocks of ``block_size`` consecutive
layers and gives each block a run count: 0 = skip, 1 = execute, ``loop_runs`` (>= 2) = loop (the
block runs that many times in a row). Blocks keep their order. The block size must divide the
layer count (a short last block would make "one decision per block" mean different compute for
different blocks; we reject it and name the divisors instead).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np


class Action(IntEnum):
    """The decision for one block."""

    SKIP = 0
    EXECUTE = 1
    LOOP = 2


class ProgramError(ValueError):
    """An invalid program, block size or run count."""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_block_size(num_layers: int, block_size: int) -> int:
    """Return the number of blocks, or raise naming both numbers."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ProgramError(f"num_layers must be a positive int, got {num_layers!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ProgramError(f"block_size must be a positive int, got {block_size!r}")
    if num_layers % block_size:
        raise ProgramError(
            f"block_size={block_size} does not divide num_layers={num_layers}; "
            f"choose one of {divisors(num_layers)}"
        )
    return num_layers // block_size


@dataclass(frozen=True)
class Program:
    """Immutable, hashable run counts per block.

    >>> p = Program.from_runs([1, 2, 0, 1], num_layers=4)
    >>> p.layer_calls
    (0, 1, 1, 3)
    """

    runs: tuple[int, ...]
    num_layers: int
    block_size: int = 1
    loop_runs: int = 2
    model_name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.runs, str | bytes) or not isinstance(self.runs, Iterable):
            raise ProgramError(f"runs must be a sequence of ints, got {self.runs!r}")
        runs = tuple(self.runs)
        for b, r in enumerate(runs):  # exact ints only: 1.0, "1" and True are not run counts
            if isinstance(r, bool | np.bool_) or not isinstance(r, numbers.Integral):
                raise ProgramError(f"runs[{b}] must be an int run count, got {r!r} ({type(r).__name__})")
        object.__setattr__(self, "runs", tuple(int(r) for r in runs))
        for name in ("num_layers", "block_size", "loop_runs"):
            value = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
                raise ProgramError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
            object.__setattr__(self, name, int(value))
        if self.model_name is not None and not isinstance(self.model_name, str):
            raise ProgramError(f"model_name must be a string or null, got {self.model_name!r}")
        num_blocks = check_block_size(self.num_layers, self.block_size)
        if not isinstance(self.loop_runs, int) or self.loop_runs < 2:
            raise ProgramError(f"loop_runs must be an int >= 2, got {self.loop_runs!r}")
        if len(self.runs) != num_blocks:
            raise ProgramError(
                f"program has {len(self.runs)} run counts but the model has {num_blocks} blocks "
                f"({self.num_layers} layers / block_size {self.block_size})"
            )
        for b, r in enumerate(self.runs):
            if r not in (0, 1, self.loop_runs):
                raise ProgramError(
                    f"run count {r} for block {b} is out of range: allowed 0 (skip), 1 (execute), "
                    f"{self.loop_runs} (loop)"
                )

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def full(cls, num_layers: int, block_size: int = 1, loop_runs: int = 2, model_name: str | None = None) -> Program:
        """The identity program: every layer once."""
        n = check_block_size(num_layers, block_size)
        return cls((1,) * n, num_layers, block_size, loop_runs, model_name)

    @classmethod
    def from_runs(
        cls,
        runs: Any,
        num_layers: int,
        block_size: int = 1,
        loop_runs: int = 2,
        model_name: str | None = None,
    ) -> Program:
        return cls(tuple(runs), num_layers, block_size, loop_runs, model_name)

    @classmethod
    def from_actions(
        cls, actions: Any, num_layers: int, block_size: int = 1, loop_runs: int = 2, model_name: str | None = None
    ) -> Program:
        """Build from SKIP / EXECUTE / LOOP actions (LOOP -> ``loop_runs`` runs)."""
        runs = [action_to_runs(int(a), loop_runs) for a in actions]
        return cls(tuple(runs), num_layers, block_size, loop_runs, model_name)

    # ---- derived ------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.runs)

    def block_layers(self, block: int) -> range:
        return range(block * self.block_size, (block + 1) * self.block_size)

    @property
    def layer_calls(self) -> tuple[int, ...]:
        """Executed layer indices in order, e.g. ``(0, 1, 1, 3)``."""
        calls: list[int] = []
        for b, r in enumerate(self.runs):
            for _ in range(r):
                calls.extend(self.block_layers(b))
        return tuple(calls)

    @property
    def num_calls(self) -> int:
        return sum(self.runs) * self.block_size

    @property
    def compute_fraction(self) -> float:
        return self.num_calls / self.num_layers

    @property
    def is_identity(self) -> bool:
        return all(r == 1 for r in self.runs)

    def __str__(self) -> str:
        return runs_string(self.runs)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": list(self.runs),
            "num_layers": self.num_layers,
            "block_size": self.block_size,
            "loop_runs": self.loop_runs,
            "model_name": self.model_name,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Program:
        """The inverse of :meth:`to_dict`; every field must have exactly its type (no coercion)."""
        missing = {"runs", "num_layers"} - set(d)
        if missing:
            raise ProgramError(f"program JSON is missing {sorted(missing)}")
        unknown = set(d) - {"runs", "num_layers", "block_size", "loop_runs", "model_name"}
        if unknown:
            raise ProgramError(f"program JSON has unknown fields {sorted(unknown)}")
        if not isinstance(d["runs"], list | tuple):
            raise ProgramError(f"program JSON field runs must be a list of ints, got {d['runs']!r}")
        return cls(tuple(d["runs"]), d["num_layers"], d.get("block_size", 1), d.get("loop_runs", 2),
                   d.get("model_name"))

    @classmethod
    def from_json(cls, text: str) -> Program:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProgramError(f"program JSON does not parse: {e}") from e
        if not isinstance(data, dict):
            raise ProgramError(f"program JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


def runs_string(runs: Any) -> str:
    """Run counts as text, one character a block: ``-`` skip, ``x`` execute, the count for a loop."""
    return "".join({0: "-", 1: "x"}.get(int(r), str(int(r))) for r in runs)


def action_to_runs(action: int, loop_runs: int = 2) -> int:
    if action == Action.SKIP:
        return 0
    if action == Action.EXECUTE:
        return 1
    if action == Action.LOOP:
        return loop_runs
    raise ProgramError(f"unknown action {action!r}; expected one of {[a.name for a in Action]}")
