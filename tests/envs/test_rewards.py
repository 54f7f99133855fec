"""The reward through the engine on a tiny model: the gold_logprob and correct task terms, wrong_penalty,
relative_to_full, and which examples a weighted mixture draws."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polar_rl import load_model
from polar_rl.config import EnvConfig
from polar_rl.envs.engine import LockstepEngine
from polar_rl.models.adapter import LayerModel
from polar_rl.program import Program
from polar_rl.tasks import load_task
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.multiple_choice import score_packed
from tests.agents.helpers import tiny_model_dir

LAMBDA = 0.1
FULL = [1, 1, 1, 1]
SKIP_ONE = [1, 0, 1, 1]  # tiny model: 4 layers, block size 1
QUESTION = MCExample("toy/q", "Question: what comes after 3?\nAnswer:", (" 4", " 9", " no"), 0)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LayerModel:
    return load_model(str(tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")))


@pytest.fixture(scope="module")
def right_and_wrong(tiny_lm: LayerModel) -> list[MCExample]:
    """One question twice: gold = the full model's likeliest choice (right), then its least likely (wrong)."""
    logprobs = score_packed(tiny_lm, [QUESTION]).logprobs[0]
    assert logprobs.argmax() != logprobs.argmin()
    return [replace(QUESTION, id="toy/right", gold=int(logprobs.argmax())),
            replace(QUESTION, id="toy/wrong", gold=int(logprobs.argmin()))]


def _episode(lm: LayerModel, examples: list[MCExample], actions: list[int],
             **env: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Run one episode per example under the fixed ``actions``: the summed rewards and the final infos."""
    task = Task("toy", "test", "multiple_choice", tuple(examples))
    cfg = EnvConfig(compute_penalty=LAMBDA, prefix_cache_gb=0.0, **env)
    engine = LockstepEngine(lm, task, cfg, n_envs=len(examples), shuffle=False)
    engine.reset(examples)
    total, done, infos, block = np.zeros(len(examples)), False, [], 0
    while not done:
        _, rewards, done, infos = engine.step(np.full(len(examples), actions[block]))
        total += rewards
        block += 1
    return total, infos


def _scored(lm: LayerModel, examples: list[MCExample], runs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Independently of the engine: (correct, gold log-prob normalised over the choices) under ``runs``."""
    scores = score_packed(lm, examples, Program.from_runs(runs, lm.num_layers))
    gold = torch.stack([lp[g] - torch.logsumexp(lp, 0) for lp, g in zip(scores.logprobs, scores.gold.tolist(),
                                                                         strict=True)])
    return scores.correct.numpy(), gold.numpy().astype(np.float64)


def _compute(runs: list[int]) -> float:
    return LAMBDA * sum(runs) / len(runs)


def test_correct_reward_is_one_when_right_and_zero_when_wrong(tiny_lm, right_and_wrong) -> None:
    total, infos = _episode(tiny_lm, right_and_wrong, FULL, reward="correct")
    assert [i["correct"] for i in infos] == [True, False]
    assert [i["reward_task"] for i in infos] == [1.0, 0.0]
    np.testing.assert_allclose(total, [1.0 - _compute(FULL), -_compute(FULL)], atol=1e-6)


def test_correct_reward_follows_the_program_not_the_full_model(tiny_lm, right_and_wrong) -> None:
    correct, _ = _scored(tiny_lm, right_and_wrong, SKIP_ONE)
    total, infos = _episode(tiny_lm, right_and_wrong, SKIP_ONE, reward="correct")
    assert [i["correct"] for i in infos] == correct.tolist()
    assert [i["full_correct"] for i in infos] == [True, False]
    np.testing.assert_allclose(total, correct - _compute(SKIP_ONE), atol=1e-6)


@pytest.mark.parametrize("runs", [FULL, SKIP_ONE], ids=["full", "skip-layer-1"])
def test_gold_logprob_reward_is_the_choice_normalised_gold_logprob(tiny_lm, right_and_wrong, runs) -> None:
    _, gold_logprob = _scored(tiny_lm, right_and_wrong, runs)
    assert (gold_logprob > -10).all()  # inside the clip: the term is the log-prob itself
    total, infos = _episode(tiny_lm, right_and_wrong, runs, reward="gold_logprob")
    np.testing.assert_allclose([i["reward_task"] for i in infos], gold_logprob, atol=1e-5)
    np.testing.assert_allclose(total, gold_logprob - _compute(runs), atol=1e-5)
    if runs == FULL:  # gold = the likeliest choice earns more than gold = the least likely
        assert infos[0]["reward_task"] > infos[1]["reward_task"]


@pytest.mark.parametrize("mode", ["correct", "gold_logprob"])
def test_wrong_penalty_is_charged_only_when_the_answer_is_wrong(tiny_lm, right_and_wrong, mode) -> None:
    plain, plain_infos = _episode(tiny_lm, right_and_wrong, FULL, reward=mode)
    charged, infos = _episode(tiny_lm, right_and_wrong, FULL, reward=mode, wrong_penalty=0.5)
    np.testing.assert_allclose(charged - plain, [0.0, -0.5], atol=1e-6)
    np.testing.assert_allclose([i["reward_task"] - p["reward_task"] for i, p in zip(infos, plain_infos, strict=True)],
                               [0.0, -0.5], atol=1e-6)


def test_relative_reward_subtracts_the_full_models_term_but_not_its_penalty(tiny_lm, right_and_wrong) -> None:
    """relative_to_full: (the program's term - wrong_penalty if it is wrong) - the full model's term."""
    _, full_term = _scored(tiny_lm, right_and_wrong, FULL)
    correct, term = _scored(tiny_lm, right_and_wrong, SKIP_ONE)
    settings = dict(reward="gold_logprob", relative_to_full=True, wrong_penalty=0.25)
    _, infos = _episode(tiny_lm, right_and_wrong, FULL, **settings)
    np.testing.assert_allclose([i["reward_task"] for i in infos], [0.0, -0.25], atol=1e-5)
    total, infos = _episode(tiny_lm, right_and_wrong, SKIP_ONE, **settings)
    want = term - full_term - 0.25 * ~correct
    np.testing.assert_allclose([i["reward_task"] for i in infos], want, atol=1e-5)
    np.testing.assert_allclose(total, want - _compute(SKIP_ONE), atol=1e-5)


# ---- weighted mixtures ------------------------------------------------------------------------------


def _member(tmp_path: Path, name: str, n: int) -> dict[str, Any]:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "q": f"{name} {i}?", "choices": [" yes", " no"], "gold": 0})
                            + "\n" for i in range(n)))
    return {"name": name, "source": {"path": str(path)}, "id_column": "id", "context": "Q: {q}\nA:",
            "choices": {"column": "choices"}, "gold": {"column": "gold", "type": "index"}}


@pytest.fixture
def two_to_one(tmp_path: Path) -> Task:
    """Member ``big`` (weight 2) has 4 questions, ``small`` (weight 1) 12: drawing examples uniformly would
    favour ``small`` 3:1, drawing by weight favours ``big`` 2:1."""
    spec = {"name": "mix", "mixture": [{"task": _member(tmp_path, "big", 4), "weight": 2},
                                       {"task": _member(tmp_path, "small", 12), "weight": 1}]}
    return load_task(spec, "all")


def _drawn(lm: LayerModel, task: Task, seed: int, resets: int = 150) -> list[str]:
    """The ids of the examples ``resets`` shuffled resets of an 8-episode engine start."""
    engine = LockstepEngine(lm, task, EnvConfig(prefix_cache_gb=0.0), n_envs=8, seed=seed)
    ids: list[str] = []
    for _ in range(resets):
        engine.reset()
        ids += [ex.id for ex in engine.ep.examples]  # type: ignore[union-attr]
    return ids


def test_a_two_to_one_mixture_draws_two_to_one(tiny_lm, two_to_one) -> None:
    ids = _drawn(tiny_lm, two_to_one, seed=0)
    members = Counter(i.split("/")[0] for i in ids)
    assert members["big"] / len(ids) == pytest.approx(2 / 3, abs=0.05)  # 1,200 draws: 3.7 standard deviations
    assert set(ids) == set(two_to_one.ids)  # every question of both members comes up
    per_question = Counter(ids)
    big = [per_question[f"big/r{i}"] / len(ids) for i in range(4)]
    assert big == pytest.approx([2 / 3 / 4] * 4, abs=0.05)  # within a member: uniform


def test_mixture_draws_are_deterministic_under_a_seed(tiny_lm, two_to_one) -> None:
    first = _drawn(tiny_lm, two_to_one, seed=7, resets=20)
    assert _drawn(tiny_lm, two_to_one, seed=7, resets=20) == first
    assert _drawn(tiny_lm, two_to_one, seed=8, resets=20) != first
