"""Example and task value objects shared by every task source.

Examples are plain frozen data: no tokens, no model. Scoring (packed log-probs) and generation live
elsewhere and consume these objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from polar_rl.config import shorten

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
            raise TaskError(f"example id must be a string, got {shorten(self.id)} ({type(self.id).__name__})")
        where = f"example {shorten(self.id)}"
        if not isinstance(self.context, str):
            raise TaskError(f"{where}: context must be a string, got {shorten(self.context)}")
        if not self.context.strip():  # the first choice token would be predicted from nothing
            raise TaskError(f"{where}: empty context {shorten(self.context)}; a question needs a context to score "
                            f"its choices against")
        if not isinstance(self.choices, tuple) or not all(isinstance(c, str) for c in self.choices):
            raise TaskError(f"{where}: choices must be a tuple of strings, got {shorten(self.choices)}")
        if not self.choices:
            raise TaskError(f"{where} has no choices")
        if len(self.choices) < 2:  # one choice is always "right": nothing to score
            raise TaskError(f"{where} has only one choice {shorten(list(self.choices))}; multiple choice needs "
                            f"at least 2")
        _check_choices_scorable(where, self.choices)
        if isinstance(self.gold, bool) or not isinstance(self.gold, int):
            raise TaskError(f"{where}: gold must be an int index, got {shorten(self.gold)} "
                            f"({type(self.gold).__name__})")
        if not 0 <= self.gold < len(self.choices):
            raise TaskError(f"{where}: gold {self.gold} not in range(0, {len(self.choices)})")


def _check_choices_scorable(where: str, choices: tuple[str, ...]) -> None:
    """TaskError for a choice with no text (scored as a lone space, or as no tokens at all) and for two
    identical choices (they tie, and argmax picks the first: a gold on the second copy is never right)."""
    for i, c in enumerate(choices):
        if not c.strip():
            raise TaskError(f"{where}: choice {i} is empty ({shorten(c)}) in {shorten(list(choices))}; every "
                            f"choice needs text to score")
    first: dict[str, int] = {}
    for i, c in enumerate(choices):
        if c in first:
            raise TaskError(f"{where}: choices {first[c]} and {i} are identical ({shorten(c)}) in "
                            f"{shorten(list(choices))}; they always tie, so remove one")
        first[c] = i


@dataclass(frozen=True)
class GenExample:
    """A generative question (gsm8k): ``answer`` is the normalised final number, e.g. ``"18"``."""

    id: str
    context: str
    answer: str
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TaskError(f"example id must be a string, got {shorten(self.id)} ({type(self.id).__name__})")
        if not isinstance(self.context, str) or not self.context.strip():
            raise TaskError(f"example {shorten(self.id)}: empty prompt {shorten(self.context)}; nothing to generate "
                            f"from")


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
            raise TaskError(f"task {shorten(self.name)}: unknown kind {shorten(self.kind)}")
        want = MCExample if self.kind == "multiple_choice" else GenExample
        bad = next((e for e in self.examples if not isinstance(e, want)), None)
        if bad is not None:
            raise TaskError(f"task {shorten(self.name)} is {self.kind} but holds {type(bad).__name__} {shorten(bad.id)}")
        if self.weights is not None:
            if len(self.weights) != len(self.examples):
                raise TaskError(
                    f"task {shorten(self.name)}: {len(self.weights)} weights for {len(self.examples)} examples"
                )
            if any(not math.isfinite(w) or w < 0 for w in self.weights):
                raise TaskError(f"task {shorten(self.name)}: weights must be finite and >= 0")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.examples)
