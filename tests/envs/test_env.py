"""The environment: API checkers, determinism, batched == single, prefix cache, masks, bad input."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import polar_rl
from polar_rl.config import ConfigError, EnvConfig
from polar_rl.envs import InvalidActionError, LayerProgramEnv, LayerProgramVecEnv, LockstepEngine
from polar_rl.program import Action, ProgramError
from polar_rl.tasks import load_task

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def train_task():
    return load_task("arc_easy", "train")


def cfg(**kw) -> EnvConfig:
    base = dict(block_size=5, prefix_cache_gb=0.5)
    base.update(kw)
    return EnvConfig(**base)


def test_registered_on_import():
    assert polar_rl.ENV_ID == "polar_rl/LayerProgram-v0"
    spec = gym.spec("polar_rl/LayerProgram-v0")
    assert spec.entry_point == "polar_rl.envs.layer_program_env:LayerProgramEnv"


def test_gym_make_runs_an_episode(real_model, train_task):
    env = gym.make("polar_rl/LayerProgram-v0", model=real_model, task=train_task, config=cfg())
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, r, done, trunc, info = env.step(Action.EXECUTE)
        total += r
        steps += 1
        assert not trunc
    assert steps == 6
    assert info["layer_calls"] == 30 and info["compute_fraction"] == 1.0
    assert info["correct"] == info["full_correct"]  # the full program is the full model
    assert info["margin"] == pytest.approx(info["full_margin"], abs=1e-4)
    # rewards paid step by step sum to task term - lambda x compute fraction
    assert total == pytest.approx(info["reward_task"] - 0.1 * 1.0, abs=1e-5)


def test_env_checkers_pass_without_warnings(real_model, train_task):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = LayerProgramEnv(real_model, train_task, config=cfg(block_size=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check(env, skip_render_check=True)
        sb3_check(env, warn=True)


def _episode(env: LayerProgramEnv, seed: int, actions):
    obs, info = env.reset(seed=seed)
    observations, rewards = [obs], []
    for a in actions:
        obs, r, done, _, last = env.step(a)
        observations.append(obs)
        rewards.append(r)
    return info["example_id"], np.stack(observations), np.array(rewards), last


def test_same_seed_gives_identical_episodes(real_model, train_task):
    actions = [1, 0, 2, 1, 0, 1]
    a = _episode(LayerProgramEnv(real_model, train_task, config=cfg()), 7, actions)
    b = _episode(LayerProgramEnv(real_model, train_task, config=cfg()), 7, actions)
    c = _episode(LayerProgramEnv(real_model, train_task, config=cfg()), 8, actions)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert c[0] != a[0]


def test_batched_equals_single(real_model, train_task):
    n = 4
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 3, size=(6, n))
    venv = LayerProgramVecEnv(real_model, train_task, config=cfg(prefix_cache_gb=0), n_envs=n, seed=1)
    obs = venv.reset()
    examples = list(venv.engine.ep.examples)
    batched_obs, batched_rew, batched_info = [obs], [], None
    for t in range(6):
        o, r, d, infos = venv.step(actions[t])
        batched_obs.append(np.stack([i["terminal_observation"] for i in infos]) if d.all() else o)
        batched_rew.append(r)
        batched_info = infos
    for i, ex in enumerate(examples):
        single = LockstepEngine(real_model, train_task, cfg(prefix_cache_gb=0), n_envs=1)
        o = single.reset([ex])
        np.testing.assert_allclose(o[0], batched_obs[0][i], atol=1e-5, rtol=1e-5)
        for t in range(6):
            o, r, done, infos = single.step([actions[t, i]])
            np.testing.assert_allclose(o[0], batched_obs[t + 1][i], atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(r[0], batched_rew[t][i], atol=1e-5)
        for key in ("correct", "layer_calls", "runs", "full_correct"):
            assert infos[0][key] == batched_info[i][key]
        assert infos[0]["margin"] == pytest.approx(batched_info[i]["margin"], abs=1e-4)


def test_prefix_cache_hits_and_gives_identical_results(real_model, train_task):
    examples = list(train_task.examples[:4])
    program = [1, 0, 1, 2, 1, 1]
    results = {}
    for gb in (0.0, 0.5):
        engine = LockstepEngine(real_model, train_task, cfg(prefix_cache_gb=gb), n_envs=4)
        for _ in range(2):  # the second pass replays the same prefixes
            obs = [engine.reset(examples)]
            rewards = []
            for a in program:
                o, r, done, infos = engine.step([a] * 4)
                obs.append(o)
                rewards.append(r)
        results[gb] = (np.stack(obs), np.stack(rewards), engine)
    np.testing.assert_allclose(results[0.0][0], results[0.5][0], atol=1e-5)
    np.testing.assert_allclose(results[0.0][1], results[0.5][1], atol=1e-5)
    cache = results[0.5][2].cache
    assert results[0.0][2].cache is None
    assert cache.hits >= 4 * 6  # the whole second pass hit
    assert cache.nbytes <= cache.max_bytes


def test_action_masks_always_execute_budget_and_loops(real_model, train_task):
    from sb3_contrib.common.maskable.utils import get_action_masks

    config = cfg(always_execute=[0, 5], max_compute_fraction=0.5, max_loops=1)
    venv = LayerProgramVecEnv(real_model, train_task, config=config, n_envs=2)
    venv.reset()
    masks = get_action_masks(venv)
    assert masks.shape == (2, 3)
    assert not masks[:, Action.SKIP].any()  # block 0 forced
    with pytest.raises(InvalidActionError, match="SKIP is masked at block 0"):
        venv.step(np.array([0, 1]))
    engine = venv.engine
    engine.step([2, 1])  # env 0 loops block 0: 10 of 15 budgeted calls, 5 reserved for block 5
    masks = engine.action_masks()
    assert not masks[0, Action.LOOP] and not masks[0, Action.EXECUTE] and masks[0, Action.SKIP]
    assert masks[1, Action.EXECUTE] and not masks[1, Action.LOOP]  # 5 used + 5 reserved + 10 > 15
    with pytest.raises(InvalidActionError, match="out of range|not one of"):
        engine.step([7, 1])


def test_split_smaller_than_n_wraps_around(real_model):
    tiny = load_task("arc_easy", "val", limit=3)
    venv = LayerProgramVecEnv(real_model, tiny, config=cfg(block_size=15), n_envs=5, shuffle=False)
    venv.reset()
    ids = [ex.id for ex in venv.engine.ep.examples]
    assert ids[:3] == [ex.id for ex in tiny.examples] and ids[3:] == ids[:2]


def test_nonfinite_hidden_state_ends_episode_with_worst_reward(real_model, train_task):
    engine = LockstepEngine(real_model, train_task, cfg(prefix_cache_gb=0), n_envs=2)
    engine.reset(list(train_task.examples[:2]))
    engine.step([1, 1])
    with torch.inference_mode():
        engine.ep.hidden[0, 3] = float("inf")  # an overflow in episode 0 (rows never attend across episodes)
    for _ in range(5):
        obs, rewards, done, infos = engine.step([1, 1])
        assert np.isfinite(obs).all()
    assert infos[0]["nonfinite"] and not infos[0]["correct"] and infos[0]["reward_task"] == -10.0
    assert not infos[1]["nonfinite"] and infos[1]["correct"] == infos[1]["full_correct"]
    assert engine.nonfinite_count == 1


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(compute_penalty=-0.1), ConfigError, "compute_penalty"),
        (dict(reward="accuracy"), ConfigError, "accuracy"),
        (dict(max_compute_fraction=0.0), ConfigError, "max_compute_fraction"),
        (dict(block_size=4), ProgramError, "block_size=4 does not divide num_layers=30"),
        (dict(always_execute=[40]), ValueError, r"always_execute blocks \[40\] out of range"),
    ],
)
def test_bad_env_settings(real_model, train_task, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        LockstepEngine(real_model, train_task, cfg(**kwargs), n_envs=1)


def test_bad_n_envs(real_model, train_task):
    with pytest.raises(ValueError, match="n_envs must be an int >= 1, got 0"):
        LockstepEngine(real_model, train_task, cfg(), n_envs=0)


def test_observation_layout_is_documented(real_model, train_task):
    engine = LockstepEngine(real_model, train_task, cfg(obs_pooled=True), n_envs=1)
    obs = engine.reset(list(train_task.examples[:1]))
    layout = engine.obs_spec.layout
    assert list(layout) == ["hidden", "pooled", "logit_lens", "block", "compute", "prev_action"]
    assert obs.shape[1] == engine.obs_spec.dim == 576 * 2 + 3 + 7 + 1 + 4
    assert obs[0, layout["block"]].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert obs[0, layout["prev_action"]].tolist() == [1, 0, 0, 0]
    engine.step([2])
    obs = engine.observe()
    assert obs[0, layout["compute"]][0] == pytest.approx(10 / 30)
    assert obs[0, layout["prev_action"]].tolist() == [0, 0, 0, 1]
    lens = obs[0, layout["logit_lens"]]
    assert 0 <= lens[0] <= 1 and 0 <= lens[1] <= 1
    assert torch.isfinite(torch.tensor(obs)).all()


@pytest.mark.parametrize("reward", ["margin", "gold_prob"])
def test_relative_to_full_reward_is_zero_for_the_full_program(real_model, train_task, reward):
    config = cfg(reward=reward, relative_to_full=True, compute_penalty=0.0)
    engine = LockstepEngine(real_model, train_task, config, n_envs=2)
    engine.reset(list(train_task.examples[:2]))
    for _ in range(6):
        _, rewards, done, infos = engine.step([1, 1])
    np.testing.assert_allclose(rewards, 0.0, atol=1e-4)
    engine.reset(list(train_task.examples[:2]))
    for b in range(6):
        _, rewards, done, infos = engine.step([0, 1] if b in (3, 4) else [1, 1])
    if reward == "margin":
        assert rewards[0] == pytest.approx(infos[0]["margin"] - infos[0]["full_margin"], abs=1e-5)
    assert rewards[0] != pytest.approx(0.0, abs=1e-4) and rewards[1] == pytest.approx(0.0, abs=1e-4)


def test_gold_prob_reward_is_the_choice_probability(real_model, train_task):
    from polar_rl.tasks.multiple_choice import score_packed

    ex = train_task.examples[0]
    engine = LockstepEngine(real_model, train_task, cfg(reward="gold_prob", compute_penalty=0.0), n_envs=1)
    engine.reset([ex])
    for _ in range(6):
        _, rewards, done, infos = engine.step([1])
    lps = score_packed(real_model, [ex]).logprobs[0]
    assert rewards[0] == pytest.approx(float(torch.softmax(lps, 0)[ex.gold]), abs=1e-5)


@pytest.mark.parametrize("reward", ["gold_prob", "margin"])
def test_shaped_rewards_telescope_to_the_relative_reward(real_model, train_task, reward):
    """Potential-based shaping: per-step rewards differ, their sum equals the terminal relative reward."""
    lam = 0.2
    plain = LockstepEngine(real_model, train_task, cfg(reward=reward, relative_to_full=True, compute_penalty=lam),
                           n_envs=3)
    shaped = LockstepEngine(real_model, train_task, cfg(reward=reward, relative_to_full=True, compute_penalty=lam,
                                                        reward_shaping=True), n_envs=3)
    examples = list(train_task.examples[:3])
    actions = [[1, 0, 1], [1, 1, 2], [1, 0, 1], [1, 1, 0], [1, 2, 1], [1, 1, 1]]  # env 0 executes every block
    totals = {}
    for name, engine in (("plain", plain), ("shaped", shaped)):
        engine.reset(examples)
        steps = []
        for a in actions:
            _, rewards, done, infos = engine.step(a)
            steps.append(rewards)
        assert done
        totals[name] = (np.asarray(steps), infos)
    plain_steps, plain_infos = totals["plain"]
    shaped_steps, shaped_infos = totals["shaped"]
    np.testing.assert_allclose(shaped_steps.sum(0), plain_steps.sum(0), atol=1e-4)
    assert [i["program"] for i in shaped_infos] == [i["program"] for i in plain_infos]
    # the first decision already pays for itself: env 1 skipped block 0, env 0 executed it
    assert shaped_steps[0, 0] == pytest.approx(-lam * 5 / 30)
    assert shaped_steps[0, 1] != pytest.approx(plain_steps[0, 1], abs=1e-4)
    assert shaped_steps[1, 2] != pytest.approx(plain_steps[1, 2], abs=1e-4)  # a LOOP is charged at once too
    # an all-EXECUTE episode gets only the compute charge until the end, and 0 task reward in total
    np.testing.assert_allclose(shaped_steps[:, 0], -lam * 5 / 30, atol=1e-4)


def test_reward_shaping_needs_relative_to_full():
    with pytest.raises(ConfigError, match="reward_shaping telescopes"):
        cfg(reward_shaping=True, relative_to_full=False)


def test_fewer_examples_than_envs_leave_idle_rows_that_run_nothing(real_model, train_task, monkeypatch):
    """The last chunk of an evaluation: rows past the examples given are padding that costs no layer call,
    and the real rows get exactly what a full-size batch gives them."""
    examples = list(train_task.examples[:3])
    program = [1, 0, 2, 1, 1, 1]
    full = LockstepEngine(real_model, train_task, cfg(prefix_cache_gb=0), n_envs=3)
    full.reset(examples)
    for a in program:
        _, _, _, want = full.step([a] * 3)

    rows_run = []
    run_layer = real_model.run_layer

    def counting(layer, hidden, inputs):
        rows_run.append(hidden.shape[0])
        return run_layer(layer, hidden, inputs)

    engine = LockstepEngine(real_model, train_task, cfg(prefix_cache_gb=0), n_envs=8,
                            reference=dict(full.reference))
    monkeypatch.setattr(real_model, "run_layer", counting)
    engine.reset(examples[:2])
    for a in program:
        _, _, done, infos = engine.step([a] * 8)
    assert done and sum(rows_run) == 2 * 5 * 6  # 2 rows x 5 layers x 6 block runs (LOOP runs twice)
    for got, ref in zip(infos[:2], want[:2], strict=True):
        assert got["correct"] == ref["correct"] and got["runs"] == ref["runs"]
        assert got["margin"] == pytest.approx(ref["margin"], abs=1e-4)
    assert all(info["layer_calls"] == 0 for info in infos[2:])
    with pytest.raises(ValueError, match="reset got 9 examples for 8 envs"):
        engine.reset(list(train_task.examples[:9]))
