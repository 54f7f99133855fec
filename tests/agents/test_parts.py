"""Fast tests of the agents' parts: algorithm registry, run folder helpers, writers, reference cache."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import sb3_contrib
import stable_baselines3

from polar_rl.agents.algorithms import algorithm_class, algorithm_kwargs, check_algorithm, masking_settings
from polar_rl.agents.run_dir import (
    JsonlWriter,
    checkpoint_paths,
    create_run_dir,
    latest_checkpoint,
    list_checkpoints,
    read_metrics,
    run_name,
)
from polar_rl.agents.wandb_output import WandbWriter
from polar_rl.config import ALGORITHMS, Config, ConfigError, EnvConfig
from polar_rl.config_sources import load_config
from polar_rl.envs.engine import LockstepEngine
from polar_rl.fileio import slug, write_json_atomic
from polar_rl.models import load_model
from polar_rl.models.adapter import LayerModel
from polar_rl.search.results import ReferenceStore
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.rewards import Reference
from tests.agents.helpers import tiny_model_dir


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
    task = Task("arc_easy", "test", "multiple_choice",
                tuple(MCExample(f"q{i}", f"Question {i}?", (" a", " b"), 0) for i in (1, 2)))
    store = ReferenceStore("abc123", task, root=tmp_path)
    assert store.load() == {}
    store.save({"q1": Reference(True, 1.5, -0.2)})
    ReferenceStore("abc123", task, root=tmp_path).save({"q2": Reference(False, -0.25, -1.5)})
    assert store.load() == {"q1": Reference(True, 1.5, -0.2), "q2": Reference(False, -0.25, -1.5)}
    assert store.path == tmp_path / "results.sqlite"
    assert ReferenceStore("abc123", task, "bfloat16", root=tmp_path).load() == {}  # a bf16 result never serves fp32
    assert ReferenceStore("abc123", task, device="cuda:0", root=tmp_path).load() == {}
    renamed = Task("my_copy", "val", "multiple_choice", task.examples)  # the same questions under another name
    assert ReferenceStore("abc123", renamed, root=tmp_path).load() == store.load()


def test_reference_store_imports_the_previous_json_cache_once(tmp_path: Path, capsys) -> None:
    """A run made before the sqlite store: its JSON reference cache is reused, with one line saying so."""
    import json

    from polar_rl.search.results import FORMAT, example_hash

    task = Task("arc_easy", "test", "multiple_choice", (MCExample("q1", "Question 1?", (" a", " b"), 0),))
    legacy = tmp_path / "reference" / "abc123__float32__cpu__arc_easy__test.json"
    legacy.parent.mkdir()
    legacy.write_text(json.dumps({"format": FORMAT, "model_hash": "abc123", "dtype": "float32", "device": "cpu",
                                  "entries": {"q1": {"example": example_hash(task.examples[0]), "correct": True,
                                                     "margin": 0.5, "gold_logprob": -0.3}}}))
    assert ReferenceStore("abc123", task, root=tmp_path).load() == {"q1": Reference(True, 0.5, -0.3)}
    assert ReferenceStore("abc123", task, root=tmp_path).load() == {"q1": Reference(True, 0.5, -0.3)}
    assert capsys.readouterr().out.count("note: imported the reference cache") == 1


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


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LayerModel:
    return load_model(str(tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")))


@pytest.fixture
def tiny_engine(tiny_lm: LayerModel) -> LockstepEngine:
    """A real engine over a tiny random model (4 layers): 2 episodes at a time, 5 questions, shuffled."""
    questions = tuple(MCExample(f"toy/q{i}", f"Question {i}?\nAnswer:", (" yes", " no"), i % 2) for i in range(5))
    task = Task("toy", "train", "multiple_choice", questions)
    return LockstepEngine(tiny_lm, task, EnvConfig(prefix_cache_gb=0.0), n_envs=2, seed=3)


def _drawn(engine: LockstepEngine) -> list[str]:
    """Start the next episodes; the ids of their questions."""
    engine.reset()
    return [ex.id for ex in engine.ep.examples]  # type: ignore[union-attr]


def test_rng_state_round_trip(tiny_engine: LockstepEngine) -> None:
    """A checkpoint taken at a rollout boundary (the next episodes drawn, not stepped): the resumed run
    draws those episodes again, then the same questions and global random numbers as the uninterrupted run."""
    import pickle
    import random

    import numpy as np
    import torch

    from polar_rl.agents.callbacks import capture_rng, restore_rng

    engine = tiny_engine
    _drawn(engine)
    done = False
    while not done:
        _, _, done, _ = engine.step(np.ones(engine.n, dtype=int))
    pending = _drawn(engine)  # the auto-reset at the end of a rollout
    state = pickle.loads(pickle.dumps(capture_rng(engine)))

    def draws() -> tuple:
        later = [_drawn(engine) for _ in range(4)]  # 8 draws of 5 questions: crosses into a new permutation
        return random.random(), float(np.random.rand()), float(torch.rand(1)), later

    first = draws()
    restore_rng(state, engine)
    assert _drawn(engine) == pending
    assert draws() == first


def test_best_checkpoint_needs_min_delta_to_replace_the_warm_start(tmp_path: Path, monkeypatch,
                                                                    tiny_engine: LockstepEngine) -> None:
    """Seed 1 of the main job: a PPO checkpoint tied the cloned program on val (same questions right,
    compute lower by float dust) and replaced it as best_model.zip. With ``min_delta`` it does not;
    one more question right does."""
    from stable_baselines3.common.logger import Logger

    import polar_rl.agents.callbacks as cb

    n, layers = 110, tiny_engine.lm.num_layers
    # (questions right, mean layer calls): the second ties the first with compute lower by float dust
    evaluations = iter([(57, layers - 1.0), (57, layers - 1.001), (58, layers - 1.0)])

    def fake_rollout(engine, policy):
        assert engine is tiny_engine
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
    callback = cb.ProgramEvalCallback(tiny_engine, 10, 0.1, "eval/score", tmp_path, min_delta=0.005)
    model = Model()
    callback.model = model  # type: ignore[assignment]
    for step in (0, 10, 20):
        model.num_timesteps = callback.num_timesteps = step
        callback.evaluate()
    assert saved == [0, 20]  # the tie at step 10 (score higher by 2.5e-5 < min_delta) kept the warm start
    assert json.loads((tmp_path / "best_model.json").read_text())["step"] == 20
