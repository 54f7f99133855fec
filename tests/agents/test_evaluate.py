"""The evaluation's summaries on a tiny model: the random-program aggregate over seeds."""

from __future__ import annotations

import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from polar_rl import load_model
from polar_rl.agents.algorithms import make_algorithm
from polar_rl.agents.evaluate import evaluate_methods
from polar_rl.config_sources import load_config
from polar_rl.envs import LayerProgramVecEnv
from polar_rl.models.adapter import LayerModel
from polar_rl.program import Program, runs_string
from polar_rl.search.families import search_static_programs
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.multiple_choice import score_packed
from tests.agents.helpers import tiny_model_dir

SEEDS = 4


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))  # never the user's cache


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LayerModel:
    return load_model(str(tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")))


def _questions(golds: list[int] | None = None) -> list[MCExample]:
    """26 questions with single-letter choices (equal token counts, so the tiny model's choice varies)."""
    letters = string.ascii_lowercase
    return [MCExample(f"toy/q{i}", f"Question: {letters[i] * 3} or {letters[(i * 7) % 26]}?\nAnswer:",
                      tuple(f" {letters[(i + d) % 26]}" for d in (0, 3, 9)), 0 if golds is None else golds[i])
            for i in range(26)]


def _seeds_disagree(lm: LayerModel, k: int) -> list[MCExample]:
    """The questions, each with its gold on a choice only some random_k seeds pick where they disagree,
    so the seeds' accuracies differ."""
    probe = search_static_programs(lm, _questions(), task="toy", split="test", min_compute=0.5)
    preds = [score_packed(lm, _questions(), Program.from_runs(probe.runs("random", k, seed), lm.num_layers)).pred
             for seed in range(SEEDS)]
    golds = []
    for i in range(26):
        votes = Counter(int(p[i]) for p in preds)
        golds.append(min(votes, key=lambda c: (votes[c], c)) if len(votes) > 1 else i % 3)
    return _questions(golds)


def test_random_aggregate_is_the_mean_and_range_of_its_seeds(tiny_lm: LayerModel) -> None:
    examples = _seeds_disagree(tiny_lm, k=1)
    task = Task("toy", "test", "multiple_choice", tuple(examples))
    cfg = load_config(overrides=["--env.block_size", "1", "--env.n_envs", "4", "--agent.n_steps", "8",
                                 "--agent.batch_size", "8", "--agent.net_arch", "[8]",
                                 "--baselines.families", "[greedy,random]", "--baselines.random_seeds", str(SEEDS)])
    found = search_static_programs(tiny_lm, examples, task="toy", split="test", min_compute=0.5)
    model = make_algorithm(cfg, LayerProgramVecEnv(tiny_lm, task, config=cfg.env, n_envs=4, seed=0), seed=0)
    result, records = evaluate_methods(tiny_lm, cfg, model, task, {}, show_progress=False, baselines=found,
                                       curves=True)  # random programs at every k
    methods = result["methods"]
    assert result["matched_k"] == [1, 2]

    for k in result["matched_k"]:
        per_seed = {}
        for seed in range(SEEDS):
            name = f"random_{k}_s{seed}"
            assert methods[name]["program"] == runs_string(found.runs("random", k, seed))
            per_seed[name] = float(np.mean([r["correct"] for r in records if r["method"] == name]))
        assert methods[f"random_{k}"] == {
            "accuracy": pytest.approx(np.mean(list(per_seed.values()))),
            "accuracy_min": min(per_seed.values()),
            "accuracy_max": max(per_seed.values()),
            "seeds": SEEDS,
            "compute_fraction": pytest.approx(1 - k / tiny_lm.num_layers),
            "aggregate": True,
        }
        if k == 1:  # the golds make these seeds differ: a range, not one value
            assert min(per_seed.values()) < max(per_seed.values()), per_seed
        assert not any(r["method"] == f"random_{k}" for r in records)  # a summary, not a method that ran
    assert sorted(n for n in methods if n.startswith("random_") and "_s" not in n) == ["random_1", "random_2"]
