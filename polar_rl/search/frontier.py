"""The accuracy-compute frontier: the best static program at a compute, non-dominated points, and the
ceiling of a per-question router over the static programs.

"The best static program at the policy's compute" has one definition, :func:`best_static`:

- only programs **searched on the train split** compete (``bi_k``, ``skip_rank_k``, ``greedy_k``).
  Not the full model, the policy, ``policy_static`` (read off the policy's choices on the evaluated
  split), the random draws ``random_k_sN`` or their mean ``random_k``. The mean is no program: nothing
  can run it, and it has no per-question results, so no paired test. A draw is a program, but no
  search chose it: the best of the draws would be chosen by the evaluated split, and that bar would
  rise with the number of seeds by luck alone. Random programs show what the search buys; they are a
  reference, not a bar;
- its compute is at most the policy's plus a tolerance: :func:`matched_tolerance`, half a block, so
  the program at the k nearest the policy's mean layer calls counts (the k the evaluation runs);
- the most accurate of those; ties: the cheaper, then the first by name.

:func:`router_ceiling` routes over the same programs. Inputs are plain :class:`Scored` records; this
module reads no files and knows nothing of RL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from polar_rl.config import BASELINE_FAMILIES, SEARCHED_FAMILIES

#: Compute fractions closer than this are equal (they are sums of block fractions).
COMPUTE_EPS = 1e-9

_PROGRAM_NAME = re.compile(rf"(?P<family>{'|'.join(BASELINE_FAMILIES)})_(?P<k>[1-9][0-9]*)(?P<seed>_s[0-9]+)?")


class Scored(NamedTuple):
    """One method on one question set: its accuracy, its mean compute fraction and, where known, each
    question's id mapped to whether the method got it right (only :func:`router_ceiling` needs it)."""

    name: str
    accuracy: float
    compute: float
    correct: Mapping[str, bool] | None = None


class CeilingPoint(NamedTuple):
    """The router ceiling at ``compute``: its accuracy and how many programs it routes over."""

    compute: float
    accuracy: float
    programs: int


def family(name: str) -> str | None:
    """The static family whose program ``name`` is (``greedy_3``: greedy, ``random_3_s0``: random);
    None for the full model, the policy, ``policy_static`` and the random mean ``random_3``."""
    match = _PROGRAM_NAME.fullmatch(name)
    if match is None or (match["family"] == "random") != bool(match["seed"]):
        return None
    return match["family"]


def is_searched_program(name: str) -> bool:
    """Whether ``name`` is a program searched on the train split (``bi_k``, ``skip_rank_k``, ``greedy_k``)."""
    return family(name) in SEARCHED_FAMILIES


def matched_tolerance(blocks: int | None) -> float:
    """Half a block's compute fraction (``0.5 / blocks``): the program at the k nearest a mean compute
    lies within it. Unknown block count: :data:`COMPUTE_EPS`."""
    return 0.5 / blocks if blocks else COMPUTE_EPS


def best_static(methods: Iterable[Scored], compute: float, tolerance: float = COMPUTE_EPS) -> Scored | None:
    """The most accurate searched program with compute <= ``compute + tolerance``; ties: the cheaper,
    then the first by name. None when no searched program is that cheap."""
    pool = [m for m in methods if is_searched_program(m.name) and m.compute <= compute + tolerance]
    return min(pool, key=lambda m: (-m.accuracy, round(m.compute, 9), m.name), default=None)


def dominates(a: Scored, b: Scored) -> bool:
    """``a`` is at least as accurate at no more compute, and strictly better in one of the two."""
    return (a.accuracy >= b.accuracy and a.compute <= b.compute
            and (a.accuracy > b.accuracy or a.compute < b.compute))


def non_dominated(points: Sequence[Scored]) -> list[bool]:
    """For each point: whether no other point dominates it (equal points do not dominate each other)."""
    return [not any(dominates(q, p) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]


def router_ceiling(programs: Iterable[Scored]) -> list[CeilingPoint]:
    """The accuracy of an oracle router over the searched programs among ``programs`` that carry
    ``correct``: at each of their computes c, a question counts as right when some program of compute
    <= c gets it right. Only questions every such program answered count. Empty when there are none."""
    tables = [(p.compute, p.correct) for p in programs if is_searched_program(p.name) and p.correct is not None]
    if not tables:
        return []
    questions = set.intersection(*(set(correct) for _, correct in tables))
    curve = []
    for c in sorted({compute for compute, _ in tables}):
        cheap = [correct for compute, correct in tables if compute <= c + COMPUTE_EPS]
        right = sum(any(correct[q] for correct in cheap) for q in questions)
        curve.append(CeilingPoint(c, right / max(1, len(questions)), len(cheap)))
    return curve
