"""Parity on the real model (SmolLM2-135M, ARC-Easy val): through the real CLI, export a run's
policy, then check the runner against the environment, the evaluation's scores and core generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polar_rl.config import AgentConfig, Config, EnvConfig
from polar_rl.config_sources import save_config
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import rollout, sb3_policy
from polar_rl.serving import PolarRunner
from polar_rl.tasks import load_task
from polar_rl.tasks.multiple_choice import score_packed
from tests.agents.helpers import run_polar_rl
from tests.serving.helpers import tiny_policy

pytestmark = pytest.mark.real

# the main job's features and masks (always_execute, a budget), with loops allowed so every action can occur
ENV = EnvConfig(block_size=1, loop_runs=2, obs_pooled=True, obs_logit_lens=False, always_execute=[0, 1, 28, 29],
                max_loops=2, max_compute_fraction=1.0, n_envs=8, prefix_cache_gb=0.0)


@pytest.fixture(scope="module")
def val_task() -> Any:
    return load_task("arc_easy", "val", limit=8)


@pytest.fixture(scope="module")
def real_policy(real_model, val_task) -> Any:
    return tiny_policy(real_model, ENV, seed=0)  # an untrained policy with a scaled-up actor


@pytest.fixture(scope="module")
def real_export(tmp_path_factory: pytest.TempPathFactory, real_policy) -> Path:
    run = tmp_path_factory.mktemp("real") / "run"
    run.mkdir()
    cfg = Config(seed=0, env=ENV, agent=AgentConfig(algo="maskable_ppo", net_arch=[32, 32]))
    save_config(cfg, run / "config.yaml")
    real_policy.save(run / "best_model.zip")
    proc = run_polar_rl(["export", run, "--format", "both"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"to {run / 'export'}" in proc.stdout
    return run / "export"


def test_manifest_of_a_real_run(real_export: Path, real_model) -> None:
    m = json.loads((real_export / "manifest.json").read_text())
    assert m["model"]["name"] == "smollm2-135m" and m["model"]["hash"] == real_model.model_hash
    assert (m["model"]["num_layers"], m["model"]["hidden_size"]) == (30, 576)
    assert m["masks"]["always_execute"] == [0, 1, 28, 29] and m["masks"]["max_compute_fraction"] == 1.0
    assert m["source"]["checkpoint"] == "best_model.zip" and m["source"]["algo"] == "maskable_ppo"
    assert m["observation"]["dim"] == 576 * 2 + 31 + 1 + 4


def test_runner_equals_env_and_evaluation_on_val(real_export: Path, real_model, real_policy, val_task) -> None:
    engine = LockstepEngine(real_model, val_task, ENV, n_envs=8, shuffle=False)
    records, _ = rollout(engine, sb3_policy(real_policy, deterministic=True))  # what evaluate_methods runs
    runner = PolarRunner.load(real_export, real_model)
    assert len({r["program"] for r in records}) > 1
    for ex, rec in zip(val_task.examples, records, strict=True):
        result = runner.score_choices(ex.context, ex.choices)
        assert str(result.program) == rec["program"], ex.id
        lp = np.array(result.logprobs)
        assert lp[ex.gold] - np.delete(lp, ex.gold).max() == pytest.approx(rec["margin"], abs=1e-3)
        assert (result.pred == ex.gold) == rec["correct"]
        want = score_packed(real_model, [ex], result.program).logprobs[0].numpy()
        np.testing.assert_allclose(lp, want, atol=1e-3)


def test_generate_equals_core_generate(real_export: Path, real_model) -> None:
    runner = PolarRunner.load(real_export, real_model, backend="torchscript")
    tok = real_model.tokenizer
    prompts = ["The capital of France is", "Question: Which gas do plants take in?\nAnswer:", "1, 2, 3, 4,"]
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), real_model.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
    out = runner.generate(ids, max_new_tokens=8, attention_mask=mask)
    for i, e in enumerate(enc):
        want = real_model.generate(torch.tensor([e]), out.programs[i], 8)
        assert out.sequences[i, width - len(e):].tolist() == want[0].tolist()


def test_generate_cli_prints_text_program_and_fraction(real_export: Path) -> None:
    proc = run_polar_rl(["generate", "--export", real_export, "--prompt", "The capital of France is",
                         "--max-new-tokens", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("program ") and " compute " in last and "/30 layer calls" in last
    program = last.split()[1]
    assert len(program) == 30 and set(program) <= {"x", "-", "2"}


def test_other_weights_are_refused(real_export: Path, real_model) -> None:
    from polar_rl.serving import ServingError

    saved = real_model.model_hash
    real_model.model_hash = "0123456789abcdef"
    try:
        with pytest.raises(ServingError, match="0123456789abcdef"):
            PolarRunner.load(real_export, real_model)
    finally:
        real_model.model_hash = saved
