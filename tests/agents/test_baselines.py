"""Static baselines: the prefix-sharing search equals direct scoring, matched-compute selection,
the adaptivity ablation's majority program, the disk cache, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polar_rl import Program, load_task
from polar_rl.agents.evaluate import adaptivity, majority_program, matched_ks
from polar_rl.config import Config, ConfigError
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import constant_policy, rollout, rollout_programs
from polar_rl.search.families import BaselineStore, StaticBaselines, max_skips, search_static_programs
from polar_rl.tasks.multiple_choice import score_packed
from polar_rl.tasks.rewards import choice_gold_logprob

# ---- pure selection logic -------------------------------------------------------------------------


def test_matched_ks_nearest_and_neighbours() -> None:
    assert matched_ks(27.0, 30, 1, 12, 1) == [2, 3, 4]
    assert matched_ks(26.6, 30, 1, 12, 0) == [3]  # 3.4 skipped layers -> nearest k = 3
    assert matched_ks(30.0, 30, 1, 12, 1) == [1, 2]  # a policy that skips nothing: k >= 1
    assert matched_ks(5.0, 30, 1, 12, 1) == [11, 12]  # capped at K
    assert matched_ks(20.0, 30, 5, 2, 0) == [2]  # block size 5: 10 layers = 2 blocks


def test_majority_program_and_adaptivity() -> None:
    runs = [[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert majority_program(runs) == [1, 0, 0]
    assert majority_program([[0, 1], [1, 0]]) == [0, 0]  # ties go to the cheaper choice
    ad = adaptivity(runs)
    assert ad["distinct_programs"] == 3
    # brute force over ordered pairs of different questions
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    brute = np.mean([sum(a != b for a, b in zip(runs[i], runs[j], strict=True)) for i, j in pairs])
    assert ad["mean_hamming"] == pytest.approx(brute)
    assert ad["most_common"][0] == {"program": "x--", "share": 0.5}
    assert adaptivity([[1, 0]] * 5)["mean_hamming"] == 0.0


def test_max_skips() -> None:
    assert max_skips(30, 0.6) == 12
    assert max_skips(6, 0.6) == 2
    assert max_skips(2, 0.1) == 1  # never every block


def test_random_family_is_pinned_per_seed() -> None:
    """The random baseline draws from (seed, k) alone: pinned programs (a change here moves every
    random baseline of every run), different seeds draw different blocks."""
    sb = StaticBaselines("0" * 16, "toy", "train", 1, num_layers=30, block_size=5, max_k=3, full_objective=0.0,
                         full_accuracy=0.0, block_influence=[0.0] * 6, skip_alone=[0.0] * 6, greedy_order=[],
                         greedy_objective=[], greedy_accuracy=[])
    assert sb.runs("random", 2, seed=0) == [0, 1, 1, 1, 0, 1]
    assert sb.runs("random", 2, seed=1) == [1, 1, 0, 0, 1, 1]
    assert sb.skipped("random", 2, seed=2) == [2, 5]
    assert len({tuple(sb.runs("random", 2, seed=s)) for s in range(6)}) > 1


def test_bad_baseline_settings() -> None:
    with pytest.raises(ConfigError, match="baselines.families\\[0\\]: unknown value 'pca'"):
        Config.from_dict({"baselines": {"families": ["pca"]}})
    with pytest.raises(ConfigError, match="baselines.min_compute must be < 1, got 1.5"):
        Config.from_dict({"baselines": {"min_compute": 1.5}})


# ---- the search on the real model -------------------------------------------------------------------



@pytest.fixture(scope="module")
def search_set():
    return load_task("arc_easy", "train", limit=6)


@pytest.fixture(scope="module")
def found(real_model, search_set) -> StaticBaselines:
    return search_static_programs(real_model, search_set.examples, task="arc_easy", split="train", block_size=5,
                                  min_compute=0.5, greedy_candidates=0)


def _gold_prob(lm, examples, runs) -> float:
    scores = score_packed(lm, examples, Program.from_runs(runs, lm.num_layers, block_size=5))
    return float(choice_gold_logprob(scores).exp().mean())


@pytest.mark.real
def test_greedy_search_with_shared_prefixes_equals_direct_scoring(real_model, search_set, found) -> None:
    assert found.max_k == 3 and len(found.greedy_order) == 3 and found.num_blocks == 6
    assert found.full_objective == pytest.approx(_gold_prob(real_model, search_set.examples, [1] * 6), abs=1e-4)
    for k in (1, 2, 3):
        direct = _gold_prob(real_model, search_set.examples, found.runs("greedy", k))
        assert found.greedy_objective[k - 1] == pytest.approx(direct, abs=1e-4), k
    # the first greedy step is the single-skip study: its choice is the cheapest single skip
    assert found.skipped("greedy", 1) == found.skipped("skip_rank", 1)
    assert found.skip_alone[found.greedy_order[0]] == pytest.approx(min(found.skip_alone))
    # a single skip's loss is measured against the full model
    b = found.greedy_order[0]
    assert found.full_objective - found.skip_alone[b] == pytest.approx(found.greedy_objective[0], abs=1e-6)
    # prefix sharing spends fewer layer calls than running every candidate from the embedding
    assert 0 < found.search_layer_calls < found.search_layer_calls_no_cache


@pytest.mark.real
def test_block_influence_and_family_programs(found) -> None:
    bi = np.asarray(found.block_influence)
    assert bi.shape == (6,) and np.all(bi >= 0) and np.all(bi <= 2)
    assert found.skipped("bi", 2) == sorted(np.argsort(bi)[:2].tolist())
    for family in ("bi", "skip_rank", "greedy", "random"):
        runs = found.runs(family, 2)
        assert len(runs) == 6 and runs.count(0) == 2, family
    with pytest.raises(ValueError, match="k=6 skipped blocks is out of range 0..5"):
        found.runs("bi", 6)
    with pytest.raises(ValueError, match="greedy_k: k=4 is beyond the search's K=3"):
        found.runs("greedy", 4)
    with pytest.raises(ValueError, match="unknown baseline family 'best'"):
        found.runs("best", 1)


@pytest.mark.real
def test_baseline_cache_round_trip_and_stale_model_hash(found, tmp_path: Path) -> None:
    store = BaselineStore(found.model_hash, "arc_easy", "train", 6, 5, 0.5, 0, root=tmp_path)
    assert store.load() is None
    store.save(found)
    assert store.load() == found
    other = BaselineStore("0" * 16, "arc_easy", "train", 6, 5, 0.5, 0, root=tmp_path)
    other.path = store.path  # the same file, read for another model: never reused
    assert other.load() is None
    store.path.write_text("{not json")
    assert store.load() is None


@pytest.mark.real
def test_empty_search_set_is_refused(real_model) -> None:
    with pytest.raises(ValueError, match="has no examples"):
        search_static_programs(real_model, [], task="arc_easy", split="train")


@pytest.mark.real
def test_rollout_programs_equals_one_rollout_per_program(real_model, search_set) -> None:
    from polar_rl.config import EnvConfig

    env = EnvConfig(block_size=5, n_envs=4, reward="gold_prob")
    programs = {"a": [1, 1, 1, 0, 1, 1], "b": [1, 1, 1, 0, 0, 1], "a_again": [1, 1, 1, 0, 1, 1]}
    shared = LockstepEngine(real_model, search_set, env, shuffle=False)
    got, seconds = rollout_programs(shared, programs)
    assert set(got) == set(programs) and set(seconds) == set(programs)
    assert shared.cache is not None and shared.cache.hits > 0  # b reuses a's prefix (blocks 0-3)
    for name, runs in programs.items():
        alone = LockstepEngine(real_model, search_set, env.replace(prefix_cache_gb=0.0), shuffle=False)
        want, _ = rollout(alone, constant_policy(runs))
        assert [r["example_id"] for r in got[name]] == [r["example_id"] for r in want]
        assert [r["correct"] for r in got[name]] == [r["correct"] for r in want]
        assert np.allclose([r["margin"] for r in got[name]], [r["margin"] for r in want], atol=1e-4)
        assert {r["layer_calls"] for r in got[name]} == {5 * sum(runs)}


@pytest.mark.real
def test_margin_objective_search_equals_direct_scoring(real_model, search_set, tmp_path: Path) -> None:
    found = search_static_programs(real_model, search_set.examples, task="arc_easy", split="train", block_size=5,
                                   min_compute=0.7, greedy_candidates=0, objective="margin")
    assert found.objective == "margin" and found.max_k == 1

    def margin(runs: list[int]) -> float:
        scores = score_packed(real_model, search_set.examples, Program.from_runs(runs, real_model.num_layers,
                                                                                  block_size=5))
        return float(scores.margin.clamp(-10, 10).mean())

    assert found.full_objective == pytest.approx(margin([1] * 6), abs=1e-4)
    for b in range(6):
        runs = [0 if x == b else 1 for x in range(6)]
        assert found.full_objective - found.skip_alone[b] == pytest.approx(margin(runs), abs=1e-4), b
    # the objective is part of the cache key: a margin search never answers for a gold_prob one
    margin_store = BaselineStore(found.model_hash, "arc_easy", "train", 6, 5, 0.7, 0, root=tmp_path,
                                 objective="margin")
    prob_store = BaselineStore(found.model_hash, "arc_easy", "train", 6, 5, 0.7, 0, root=tmp_path)
    assert margin_store.path != prob_store.path
    margin_store.save(found)
    assert margin_store.load() == found and prob_store.load() is None
    with pytest.raises(ValueError, match="unknown reward mode 'accuracy'"):
        search_static_programs(real_model, search_set.examples, task="arc_easy", split="train", objective="accuracy")
    with pytest.raises(ConfigError, match="baselines.objective"):
        Config.from_dict({"baselines": {"objective": "accuracy"}})


@pytest.mark.real
def test_program_accuracies_equal_direct_scoring(real_model, found) -> None:
    from polar_rl.search.runner import program_accuracies

    examples = load_task("arc_easy", "val", limit=10).examples
    programs = {"full": [1] * 6, "skip0": [0, 1, 1, 1, 1, 1], "g2": found.runs("greedy", 2),
                "late": [1, 1, 1, 1, 0, 1]}
    got = program_accuracies(real_model, examples, programs, block_size=5, chunk_size=4)
    for name, runs in programs.items():
        scores = score_packed(real_model, examples, Program.from_runs(runs, real_model.num_layers, block_size=5))
        assert got[name] == pytest.approx(float(scores.correct.float().mean())), name
    with pytest.raises(ValueError, match="program 'bad': \\[1, 2\\] is not 6 run counts of 0 or 1"):
        program_accuracies(real_model, examples, {"bad": [1, 2]}, block_size=5)


def test_warm_start_selection_set_excludes_the_searched_questions() -> None:
    from polar_rl.agents.warm_start import selection_examples

    cfg = Config.from_dict({})
    train, val = load_task("arc_easy", "train", limit=20), load_task("arc_easy", "val", limit=5)
    searched = StaticBaselines(model_hash="x", task="arc_easy", split="train", n_examples=8, num_layers=30,
                               block_size=1, max_k=1, full_objective=0.0, full_accuracy=0.0, block_influence=[],
                               skip_alone=[], greedy_order=[], greedy_objective=[], greedy_accuracy=[])
    chosen = selection_examples(cfg, searched, train, val)
    assert [ex.id for ex in chosen] == [ex.id for ex in val.examples] + [ex.id for ex in train.examples[8:]]
