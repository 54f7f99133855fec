"""polar_rl.search.frontier: the one best static program at a compute, non-dominated points, the router ceiling."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from polar_rl.search import frontier
from polar_rl.search.frontier import (
    COMPUTE_EPS,
    CeilingPoint,
    Scored,
    best_static,
    family,
    is_searched_program,
    matched_tolerance,
    non_dominated,
    router_ceiling,
)

HALF_BLOCK = matched_tolerance(30)  # 30 blocks: one block is 1/30 of the compute


@pytest.mark.parametrize(("name", "expected"), [
    ("greedy_3", "greedy"), ("skip_rank_12", "skip_rank"), ("bi_1", "bi"), ("random_3_s0", "random"),
    ("random_3", None), ("full", None), ("policy", None), ("policy_static", None), ("greedy_3_s0", None),
    ("greedy_0", None), ("greedy", None), ("lookup_3", None),
])
def test_family_names_the_static_family_of_a_program_row(name: str, expected: str | None) -> None:
    assert family(name) == expected
    assert is_searched_program(name) == (expected in ("bi", "skip_rank", "greedy"))


def test_matched_tolerance_is_half_a_block() -> None:
    assert matched_tolerance(30) == pytest.approx(1 / 60)
    assert matched_tolerance(None) == COMPUTE_EPS


def test_best_static_ignores_random_programs_their_mean_and_the_policy_rows() -> None:
    """Random draws, the random mean, the full model and policy_static are all more accurate than
    greedy_3 here; none is a program searched on train, so greedy_3 is the bar."""
    rows = [Scored("full", 0.9, 1.0), Scored("policy", 0.6, 0.897), Scored("policy_static", 0.8, 0.9),
            Scored("random_3_s0", 0.7, 0.9), Scored("random_3_s1", 0.3, 0.9), Scored("random_3", 0.65, 0.9),
            Scored("bi_3", 0.4, 0.9), Scored("greedy_3", 0.5, 0.9)]
    assert best_static(rows, 0.897, HALF_BLOCK) == Scored("greedy_3", 0.5, 0.9)


def test_best_static_ties_go_to_the_cheaper_then_the_first_name() -> None:
    same = [Scored("skip_rank_3", 0.5, 0.9), Scored("greedy_3", 0.5, 0.9), Scored("bi_3", 0.4, 0.9)]
    assert best_static(same, 0.9).name == "greedy_3"  # not the first listed
    cheaper = [*same, Scored("skip_rank_4", 0.5, 0.9 - 1 / 30)]
    assert best_static(cheaper, 0.9).name == "skip_rank_4"
    float_noise = [Scored("skip_rank_3", 0.5, 0.9), Scored("greedy_3", 0.5, 0.9 + 1e-12)]  # the same compute
    assert best_static(float_noise, 0.9).name == "greedy_3"


def test_best_static_takes_programs_within_half_a_block_above_and_any_cheaper_one() -> None:
    k3, k4, k2 = Scored("greedy_3", 0.5, 0.9), Scored("greedy_4", 0.45, 0.9 - 1 / 30), Scored("greedy_2", 0.6, 0.9 + 1 / 30)
    rows = [k2, k3, k4]
    assert best_static(rows, 0.897, HALF_BLOCK) == k3  # the nearest k, 0.1 block above the policy
    assert best_static(rows, 0.897) == k4  # no tolerance: only programs of no more compute
    assert best_static(rows, 0.88, HALF_BLOCK) == k4  # 0.9 is 0.6 blocks above: too much
    assert best_static(rows, 0.92, HALF_BLOCK) == k2  # nearest k = 2 (0.933), within half a block
    assert best_static([Scored("greedy_5", 0.55, 0.833), k3], 0.897, HALF_BLOCK).name == "greedy_5"  # cheaper and better
    assert best_static(rows, 0.8, HALF_BLOCK) is None
    assert best_static([Scored("random_3_s0", 0.5, 0.9)], 0.9, HALF_BLOCK) is None


def test_non_dominated_points() -> None:
    points = [Scored("a", 0.5, 0.9), Scored("b", 0.5, 0.9), Scored("c", 0.4, 0.9), Scored("d", 0.5, 0.8),
              Scored("e", 0.6, 1.0), Scored("f", 0.3, 0.6)]
    # a, b: equal to each other but d is as accurate at less compute; c: below a at the same compute
    assert non_dominated(points) == [False, False, False, True, True, True]
    assert non_dominated(points[:3]) == [True, True, False]  # equal points do not dominate each other
    assert non_dominated([]) == []


def _records(name: str, compute: float, right: str) -> Scored:
    """A program whose per-question results are ``right`` (one character a question q0, q1, ...: 1 right)."""
    correct = {f"q{i}": c == "1" for i, c in enumerate(right)}
    return Scored(name, sum(correct.values()) / len(correct), compute, correct)


def test_router_ceiling_on_hand_made_records() -> None:
    """At each program's compute, a question counts when some program of no more compute gets it right;
    random draws, the policy and programs without per-question results are not routed to."""
    programs = [
        _records("greedy_6", 0.8, "10000"),
        _records("bi_3", 0.9, "00100"),
        _records("greedy_3", 0.9, "11000"),
        _records("skip_rank_2", 0.933, "00010"),
        _records("random_3_s0", 0.9, "11111"),  # a draw: a reference, not routed to
        _records("policy", 0.85, "11111"),
        Scored("greedy_4", 0.9, 0.867),  # no per-question results
    ]
    assert router_ceiling(programs) == [CeilingPoint(0.8, 0.2, 1), CeilingPoint(0.9, 0.6, 3), CeilingPoint(0.933, 0.8, 4)]
    for c in (0.8, 0.9, 0.933):  # never below the best static program it may route to
        best = best_static(programs[:4], c)
        assert best is not None and next(p for p in router_ceiling(programs) if p.compute == c).accuracy >= best.accuracy
    assert router_ceiling(programs[4:]) == []


def test_router_ceiling_counts_only_questions_every_program_answered() -> None:
    a = Scored("greedy_1", 0.5, 0.9, {"q0": True, "q1": False, "q2": True})
    b = Scored("greedy_2", 0.5, 0.8, {"q1": True, "q2": False})
    assert router_ceiling([a, b]) == [CeilingPoint(0.8, 0.5, 1), CeilingPoint(0.9, 1.0, 2)]


def test_frontier_imports_only_the_standard_library_and_the_config() -> None:
    """The core module knows nothing of RL, tracking or the agents (read from its source, so the check
    holds whatever ``import polar_rl`` loads)."""
    tree = ast.parse(Path(frontier.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "re", "collections.abc", "typing", "polar_rl.config"}, imported
