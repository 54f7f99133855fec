"""Warm start: behaviour cloning of a static program before PPO, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polar_rl.agents.warm_start import candidate_names
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
