"""Warm start: which static program is cloned (candidates, the choice), and the clone through the real CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import polar_rl.agents.warm_start as ws
from polar_rl.agents.warm_start import candidate_names, choose_program
from polar_rl.config import Config, ConfigError
from tests.agents.helpers import run_dirs, run_polar_rl


class _Found:
    num_blocks = 30


def test_best_picks_the_k_that_fits_the_budget() -> None:
    cfg = Config.from_dict({"env": {"max_compute_fraction": 0.9}, "agent": {"warm_start": "best"}})
    assert candidate_names(cfg, _Found()) == ["greedy_3", "skip_rank_3", "bi_3"]  # type: ignore[arg-type]
    cfg = Config.from_dict({"env": {"max_compute_fraction": 0.85}, "agent": {"warm_start": "best"}})
    assert candidate_names(cfg, _Found()) == ["greedy_5", "skip_rank_5", "bi_5"]  # type: ignore[arg-type]


def test_best_without_a_budget_weighs_every_k_against_the_penalty() -> None:
    cfg = Config.from_dict({"agent": {"warm_start": "best"}, "baselines": {"min_compute": 0.9}})
    assert candidate_names(cfg, _Found()) == ["full", "greedy_1", "skip_rank_1", "greedy_2", "skip_rank_2",  # type: ignore[arg-type]
                                              "greedy_3", "skip_rank_3"]


@pytest.mark.parametrize(("settings", "needle"), [
    ({"agent": {"warm_start": "greedy"}}, "'greedy' is not 'best' or a static program"),
    ({"agent": {"warm_start": "random_3"}}, "'random_3' is not 'best' or a static program"),
    ({"agent": {"warm_start": "bi_0"}}, "'bi_0' is not 'best' or a static program"),
])
def test_bad_warm_start_settings_fail_when_the_config_is_read(settings: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):  # before any run folder exists
        Config.from_dict(settings)


# ---- choose_program: which program the warm start clones ----------------------------------------------

#: blocks each searched program skips (10 blocks; bi_1 and skip_rank_1 are the same program)
SKIPS = {"greedy_1": [8], "skip_rank_1": [9], "bi_1": [9],
         "greedy_2": [8, 9], "skip_rank_2": [7, 9], "bi_2": [8, 9],
         "greedy_3": [7, 8, 9], "skip_rank_3": [0, 7, 9], "bi_3": [7, 8, 9]}
#: accuracy on the selection questions, by the blocks a program skips (the full model skips none)
ACCURACY = {(): 0.60, (8,): 0.58, (9,): 0.55, (8, 9): 0.56, (7, 9): 0.50, (7, 8, 9): 0.52, (0, 7, 9): 0.40}


@dataclass
class _Searched:
    """A finished static search as choose_program reads it: the block count and each program's runs."""

    num_blocks: int = 10
    skips: dict[str, list[int]] = field(default_factory=lambda: dict(SKIPS))

    def runs(self, family: str, k: int) -> list[int]:
        name = f"{family}_{k}"
        if name not in self.skips:
            raise ValueError(f"{name} was not searched")
        return [0 if b in self.skips[name] else 1 for b in range(self.num_blocks)]


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[int]]]:
    """Accuracies from ``ACCURACY`` instead of a model; returns the programs each call asked for."""
    calls: list[dict[str, list[int]]] = []

    def accuracies(lm: Any, examples: Any, programs: dict[str, list[int]], block_size: int,
                   dtype: str = "float32") -> dict[str, float]:
        calls.append(dict(programs))
        return {n: ACCURACY[tuple(b for b, r in enumerate(runs) if r == 0)] for n, runs in programs.items()}

    monkeypatch.setattr(ws, "cached_program_accuracies", accuracies)
    return calls


def _choose(scored: list, *, warm_start: str = "best", **env: Any) -> tuple[str, list[int], dict]:
    cfg = Config.from_dict({"env": env, "agent": {"warm_start": warm_start}, "baselines": {"min_compute": 0.7}})
    return choose_program(cfg, _Searched(), None, [])  # type: ignore[arg-type]


def _skipped(runs: list[int]) -> list[int]:
    return [b for b, r in enumerate(runs) if r == 0]


def test_under_a_budget_the_most_accurate_program_at_its_k_is_cloned(scored) -> None:
    name, runs, scores = _choose(scored, max_compute_fraction=0.9)  # 10 blocks, budget 0.9: k = 1
    assert (name, _skipped(runs)) == ("greedy_1", [8])
    assert scores == {"greedy_1": 0.58, "skip_rank_1": 0.55, "bi_1": 0.55}
    (asked,) = scored
    assert len(asked) == 2  # bi_1 is skip_rank_1's program: scored once


def test_equal_accuracies_go_to_the_earlier_family(scored, monkeypatch) -> None:
    monkeypatch.setitem(ACCURACY, (9,), 0.58)  # skip_rank_1 = bi_1 now ties greedy_1
    assert _choose(scored, max_compute_fraction=0.9)[0] == "greedy_1"
    monkeypatch.setitem(ACCURACY, (9,), 0.59)  # better: the first name of the shared program
    assert _choose(scored, max_compute_fraction=0.9)[0] == "skip_rank_1"


@pytest.mark.parametrize(("lam", "expected"), [
    (0.0, "full"),       # nothing beats the full model's 0.60
    (0.1, "full"),       # objective 0.50 vs greedy_1 0.49, greedy_2 0.48, greedy_3 0.45
    (0.3, "greedy_2"),   # full 0.30, greedy_1 0.31, greedy_2 0.32, greedy_3 0.31
    (0.5, "greedy_3"),   # full 0.10, greedy_2 0.16, greedy_3 0.17
])
def test_without_a_budget_lambda_decides_between_no_warm_start_and_a_cheaper_program(scored, lam, expected) -> None:
    """The lambda sweep's decision: accuracy - lambda x compute over the full model and greedy / skip_rank
    at k = 1..3; "full" means no warm start."""
    name, runs, scores = _choose(scored, compute_penalty=lam)
    assert name == expected
    assert _skipped(runs) == ([] if expected == "full" else SKIPS[expected])
    assert set(scores) == {"full", "greedy_1", "skip_rank_1", "greedy_2", "skip_rank_2", "greedy_3", "skip_rank_3"}


def test_a_tie_with_the_full_model_means_no_warm_start(scored, monkeypatch) -> None:
    monkeypatch.setitem(ACCURACY, (8,), 0.60)
    monkeypatch.setitem(ACCURACY, (8, 9), 0.60)
    assert _choose(scored, compute_penalty=0.0)[0] == "full"


def test_candidates_that_skip_an_always_executed_block_are_left_out(scored) -> None:
    name, runs, scores = _choose(scored, max_compute_fraction=0.9, always_execute=[8])
    assert (name, _skipped(runs)) == ("skip_rank_1", [9])  # greedy_1 (more accurate) skips block 8
    assert "greedy_1" not in scores
    with pytest.raises(ConfigError, match=r"every candidate \(greedy_1, skip_rank_1, bi_1\) skips a block"):
        _choose(scored, max_compute_fraction=0.9, always_execute=[8, 9])


def test_a_named_program_is_cloned_without_scoring_any(scored) -> None:
    name, runs, scores = _choose(scored, warm_start="skip_rank_2")
    assert (name, _skipped(runs), scores, scored) == ("skip_rank_2", [7, 9], {}, [])
    with pytest.raises(ConfigError, match=r"skip_rank_2 skips blocks \[7\], which env.always_execute forbids"):
        _choose(scored, warm_start="skip_rank_2", always_execute=[7])
    with pytest.raises(ConfigError, match="agent.warm_start: greedy_4 was not searched"):
        _choose(scored, warm_start="greedy_4")


@pytest.mark.real
def test_warm_started_policy_reproduces_the_cloned_program(output_dir: Path) -> None:
    proc = run_polar_rl(["train", "--config", "configs/smoke.yaml", "--output_dir", output_dir,
                         "--agent.warm_start", "greedy_1", "--agent.warm_start_episodes", "16",
                         "--baselines.families", "[greedy]"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = run_dirs(output_dir)
    info = json.loads((run / "warm_start.json").read_text())
    assert info["program"] == "greedy_1" and info["runs"].count(0) == 1
    assert info["bc_agreement"] > 0.95
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(r for r in rows if "eval/compute_fraction" in r)
    assert first_eval["step"] == 0  # the cloned policy is evaluated before PPO changes it
    # it skips on new questions too (5/6 = the cloned program on all 8 eval questions)
    assert 5 / 6 - 1e-6 <= first_eval["eval/compute_fraction"] <= 0.9
