"""Fast tests of the agents' parts: algorithm registry, run folder helpers, writers, reference cache."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import sb3_contrib
import stable_baselines3

from polar_rl.agents.algorithms import algorithm_class, algorithm_kwargs, check_algorithm, masking_settings
from polar_rl.agents.reference_store import ReferenceStore
from polar_rl.agents.run_dir import (
    JsonlWriter,
    checkpoint_paths,
    create_run_dir,
    latest_checkpoint,
    list_checkpoints,
    read_metrics,
    run_name,
    slug,
    write_json_atomic,
)
from polar_rl.agents.wandb_output import WandbWriter
from polar_rl.config import ALGORITHMS, Config, ConfigError
from polar_rl.config_sources import load_config
from polar_rl.envs.engine import Reference


def test_registry_resolves_every_algorithm() -> None:
    assert algorithm_class("ppo") is stable_baselines3.PPO
    assert algorithm_class("a2c") is stable_baselines3.A2C
    assert algorithm_class("maskable_ppo") is sb3_contrib.MaskablePPO
    assert set(ALGORITHMS) == {"ppo", "a2c", "maskable_ppo"}
    with pytest.raises(ConfigError, match="unknown algorithm"):
        algorithm_class("dqn")


def test_kwargs_follow_the_algorithm() -> None:
    cfg = load_config(overrides=["--agent.algo", "a2c", "--agent.net_arch", "[32]",
                                 "--agent.kwargs", "{max_grad_norm: 0.3, policy_kwargs: {ortho_init: false}}"])
    kw = algorithm_kwargs(cfg.agent)
    assert "batch_size" not in kw and "n_epochs" not in kw
    assert kw["policy_kwargs"] == {"net_arch": [32], "ortho_init": False}
    assert kw["max_grad_norm"] == 0.3
    kw = algorithm_kwargs(load_config(overrides=["--agent.algo", "ppo"]).agent)
    assert kw["batch_size"] == 256 and kw["n_epochs"] == 4


def test_masking_needs_a_maskable_algorithm() -> None:
    assert masking_settings(Config().env) == []
    check_algorithm(load_config(overrides=["--agent.algo", "ppo"]))
    check_algorithm(load_config(overrides=["--env.max_compute_fraction", "0.5"]))  # maskable_ppo default
    with pytest.raises(ConfigError, match="max_compute_fraction=0.5"):
        check_algorithm(load_config(overrides=["--agent.algo", "ppo", "--env.max_compute_fraction", "0.5"]))


def test_run_name_and_folder(tmp_path: Path) -> None:
    cfg = load_config(overrides=["--seed", "7", "--env.compute_penalty", "0.05"])
    name = run_name(cfg, "configs/tasks/arc_mix.yaml", "HuggingFaceTB/SmolLM2", datetime(2025, 1, 2, 3, 4, 5))
    assert name == "arc_mix__HuggingFaceTB-SmolLM2__lam0.05__s7__20250102-030405"
    assert slug("a b/c") == "a-b-c"
    first, second = create_run_dir(tmp_path, "x"), create_run_dir(tmp_path, "x")
    assert first.name == "x" and second.name == "x-1"


def test_checkpoints_need_their_rng_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        latest_checkpoint(tmp_path)
    for steps in (64, 128, 192):
        zip_path, rng_path = checkpoint_paths(tmp_path, steps)
        zip_path.parent.mkdir(exist_ok=True)
        zip_path.write_bytes(b"zip")
        if steps != 192:  # 192: killed between the zip and the RNG file
            rng_path.write_bytes(b"rng")
    assert list_checkpoints(tmp_path) == [64, 128]
    assert latest_checkpoint(tmp_path) == 128


def test_jsonl_writer_appends_and_heals_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a"')  # killed mid-write
    writer = JsonlWriter(path)
    writer.write({"eval/accuracy": 0.5, "skip": "x", "nan": float("nan")}, {"skip": ("json",)}, step=64)
    writer.close()
    rows = read_metrics(tmp_path)
    assert rows == [{"step": 1, "a": 1}, {"step": 64, "eval/accuracy": 0.5, "nan": None}]


def test_atomic_json_leaves_no_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "eval.json", {"x": [1, 2], "y": float("inf")})
    assert json.loads((tmp_path / "eval.json").read_text()) == {"x": [1, 2], "y": None}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_reference_store_round_trip(tmp_path: Path) -> None:
    from polar_rl.tasks.examples import MCExample, Task

    task = Task("arc_easy", "test", "multiple_choice",
                tuple(MCExample(f"q{i}", f"Question {i}?", (" a", " b"), 0) for i in (1, 2)))
    store = ReferenceStore("abc123", task, root=tmp_path)
    assert store.load() == {}
    store.save({"q1": Reference(True, 1.5, -0.2)})
    ReferenceStore("abc123", task, root=tmp_path).save({"q2": Reference(False, -0.25, -1.5)})
    assert store.load() == {"q1": Reference(True, 1.5, -0.2), "q2": Reference(False, -0.25, -1.5)}
    assert store.path == tmp_path / "reference" / "abc123__float32__cpu__arc_easy__test.json"
    assert ReferenceStore("abc123", task, "bfloat16", root=tmp_path).load() == {}
    assert ReferenceStore("abc123", task, device="cuda:0", root=tmp_path).load() == {}
    store.path.write_text("not json")
    assert store.load() == {}


def test_wandb_writer_sends_scalars_with_the_step() -> None:
    import numpy as np

    class FakeRun:
        def __init__(self) -> None:
            self.calls: list[tuple[dict, int]] = []

        def log(self, data: dict, step: int) -> None:
            self.calls.append((data, step))

    run = FakeRun()
    writer = WandbWriter(run)
    writer.write({"train/loss": np.float32(0.5), "eval/accuracy": 0.25, "text": "x", "hidden": 1.0},
                 {"hidden": ("wandb",)}, step=128)
    writer.write({"text": "x"}, {}, step=129)
    assert run.calls == [({"train/loss": 0.5, "eval/accuracy": 0.25}, 128)]


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_builds_and_learns_from_the_config(algo: str) -> None:
    """The registry's kwargs are accepted by each SB3 class (a stand-in env with the same spaces)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv

    from polar_rl.agents.algorithms import make_algorithm

    class Toy(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
        action_space = gym.spaces.Discrete(3)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(5, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.full(5, self.t / 3, np.float32), float(action == 1), self.t == 3, False, {}

        def action_masks(self):
            return np.ones(3, dtype=bool)

    cfg = load_config(overrides=["--agent.algo", algo, "--env.n_envs", "2", "--agent.n_steps", "8",
                                 "--agent.batch_size", "8", "--agent.net_arch", "[8]",
                                 "--agent.init_action_probs", "[0.1, 0.85, 0.05]"])
    env = DummyVecEnv([Toy, Toy])
    model = make_algorithm(cfg, env, seed=0)
    import torch

    obs = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (4, 5)), dtype=torch.float32)
    probs = model.policy.get_distribution(obs).distribution.probs.detach()
    torch.testing.assert_close(probs, torch.tensor([[0.1, 0.85, 0.05]] * 4), atol=0.01, rtol=0)
    assert type(model) is algorithm_class(algo)
    assert model.n_steps == 8 and model.seed == 0
    model.learn(16)
    assert model.num_timesteps == 16
    with pytest.raises(ConfigError, match="rejected the arguments"):
        bad = load_config(overrides=["--agent.algo", algo, "--agent.kwargs", "{no_such_arg: 1}",
                                     "--env.n_envs", "2", "--agent.n_steps", "8", "--agent.batch_size", "8"])
        make_algorithm(bad, env, seed=0)


def test_rng_state_round_trip() -> None:
    import pickle
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch

    from polar_rl.agents.callbacks import capture_rng, restore_rng
    from polar_rl.envs.engine import LockstepEngine

    engine = SimpleNamespace(rng=np.random.default_rng(3), _order=np.array([2, 0, 1]), _cursor=1, ep=None,
                             _before_draw=None)
    engine._current_sampler_state = lambda: LockstepEngine._current_sampler_state(engine)  # type: ignore[arg-type]
    engine.sampler_state = lambda: LockstepEngine.sampler_state(engine)  # type: ignore[arg-type]
    engine.load_sampler_state = lambda s: LockstepEngine.load_sampler_state(engine, s)  # type: ignore[arg-type]
    state = pickle.loads(pickle.dumps(capture_rng(engine)))

    def draws():
        return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(engine.rng.random()))

    first = draws()
    engine._order, engine._cursor = np.arange(3), 0
    restore_rng(state, engine)  # type: ignore[arg-type]
    assert draws() == first
    assert engine._order.tolist() == [2, 0, 1] and engine._cursor == 1


def test_best_checkpoint_needs_min_delta_to_replace_the_warm_start(tmp_path: Path, monkeypatch) -> None:
    """Seed 1 of the main job: a PPO checkpoint tied the cloned program on val (same questions right,
    compute lower by float dust) and replaced it as best_model.zip. With ``min_delta`` it does not;
    one more question right does."""
    import types

    from stable_baselines3.common.logger import Logger

    import polar_rl.agents.callbacks as cb

    n, layers = 110, 30
    evaluations = iter([(57, 27.0), (57, 26.999), (58, 27.0)])  # (questions right, mean layer calls)

    def fake_rollout(engine, policy):
        right, calls = next(evaluations)
        return ([{"correct": i < right, "layer_calls": calls, "full_correct": True} for i in range(n)], 0.01)

    saved: list[int] = []

    class Model:
        logger = Logger(None, [])
        num_timesteps = 0

        def save(self, f) -> None:
            saved.append(self.num_timesteps)
            f.write(b"zip")

    monkeypatch.setattr(cb, "rollout", fake_rollout)
    monkeypatch.setattr(cb, "sb3_policy", lambda model, deterministic: None)
    engine = types.SimpleNamespace(lm=types.SimpleNamespace(num_layers=layers))
    callback = cb.ProgramEvalCallback(engine, 10, 0.1, "eval/score", tmp_path, min_delta=0.005)  # type: ignore[arg-type]
    model = Model()
    callback.model = model  # type: ignore[assignment]
    for step in (0, 10, 20):
        model.num_timesteps = callback.num_timesteps = step
        callback.evaluate()
    assert saved == [0, 20]  # the tie at step 10 (score higher by 3e-6) kept the warm start
    assert json.loads((tmp_path / "best_model.json").read_text())["step"] == 20
