"""Example and task value objects shared by every task source.

Examples are plain frozen data: no tokens, no model. Scoring (packed log-probs) and generation live
elsewhere and consume these objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["multiple_choice", "generative"]


class TaskError(ValueError):
    """A task name, split, spec or data file that cannot be turned into a task."""


@dataclass(frozen=True)
class MCExample:
    """A multiple-choice question, scored like lm-eval "rc": sum log p(choice | context).

    ``choices`` are the continuations exactly as scored, leading space included (``" water"``).
    """

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TaskError(f"example id must be a string, got {self.id!r} ({type(self.id).__name__})")
        if not isinstance(self.context, str):
            raise TaskError(f"example {self.id!r}: context must be a string, got {self.context!r}")
        if not self.context.strip():  # the first choice token would be predicted from nothing
            raise TaskError(f"example {self.id!r}: empty context {self.context!r}; a question needs a context to score "
                            f"its choices against")
        if not isinstance(self.choices, tuple) or not all(isinstance(c, str) for c in self.choices):
            raise TaskError(f"example {self.id!r}: choices must be a tuple of strings, got {self.choices!r}")
        if not self.choices:
            raise TaskError(f"example {self.id!r} has no choices")
        if len(self.choices) < 2:  # one choice is always "right": nothing to score
            raise TaskError(f"example {self.id!r} has only one choice {list(self.choices)}; multiple choice needs "
                            f"at least 2")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int):
            raise TaskError(f"example {self.id!r}: gold must be an int index, got {self.gold!r} "
                            f"({type(self.gold).__name__})")
        if not 0 <= self.gold < len(self.choices):
            raise TaskError(f"example {self.id!r}: gold {self.gold} not in range(0, {len(self.choices)})")


@dataclass(frozen=True)
class GenExample:
    """A generative question (gsm8k): ``answer`` is the normalised final number, e.g. ``"18"``."""

    id: str
    context: str
    answer: str
    stop: tuple[str, ...] = ()


Example = MCExample | GenExample


@dataclass(frozen=True)
class Task:
    """An ordered, immutable set of examples of one kind for one split.

    ``weights`` are per-example sampling weights (set by mixtures, summing to 1); ``None`` means uniform.
    """

    name: str
    split: str
    kind: TaskKind
    examples: tuple[Example, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("multiple_choice", "generative"):
            raise TaskError(f"task {self.name!r}: unknown kind {self.kind!r}")
        want = MCExample if self.kind == "multiple_choice" else GenExample
        bad = next((e for e in self.examples if not isinstance(e, want)), None)
        if bad is not None:
            raise TaskError(f"task {self.name!r} is {self.kind} but holds {type(bad).__name__} {bad.id!r}")
        if self.weights is not None:
            if len(self.weights) != len(self.examples):
                raise TaskError(
                    f"task {self.name!r}: {len(self.weights)} weights for {len(self.examples)} examples"
                )
            if any(not math.isfinite(w) or w < 0 for w in self.weights):
                raise TaskError(f"task {self.name!r}: weights must be finite and >= 0")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.examples)
