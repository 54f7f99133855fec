"""Exported equals trained (tiny model): actions, programs, choice scores and generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polar_rl.config import EnvConfig
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import rollout, sb3_policy
from polar_rl.masks import masked_argmax
from polar_rl.models.adapter import LayerModel
from polar_rl.program import Program
from polar_rl.serving import PolarRunner
from polar_rl.serving.policy import OnnxPolicy, TorchScriptPolicy
from polar_rl.tasks.multiple_choice import score_packed, tokenize_question
from tests.serving.helpers import tiny_task


def _env_observations(lm: LayerModel, cfg: EnvConfig, policy: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (observation, mask) the env shows the deterministic policy on the tiny task."""
    engine = LockstepEngine(lm, tiny_task(), cfg, n_envs=len(tiny_task()), shuffle=False)
    obs, masks = [engine.reset()], []
    done = False
    while not done:
        masks.append(engine.action_masks())
        obs_next, _, done, _ = engine.step(sb3_policy(policy)(obs[-1], masks[-1], engine.ep.block))
        if not done:
            obs.append(obs_next)
    return np.concatenate(obs), np.concatenate(masks)


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_exported_actions_equal_sb3_predict(export_dir: Path, lm, cfg, policy, backend: str) -> None:
    net = OnnxPolicy(export_dir / "policy.onnx") if backend == "onnx" else TorchScriptPolicy(export_dir / "policy.pt")
    obs, masks = _env_observations(lm, cfg, policy)
    rng = np.random.default_rng(1)
    rand = rng.normal(0, 2, size=(64, obs.shape[1])).astype(np.float32)
    rand_masks = rng.random((64, 3)) < 0.7
    rand_masks[~rand_masks.any(1), 1] = True
    obs, masks = np.concatenate([obs, rand]), np.concatenate([masks, rand_masks])
    want, _ = policy.predict(obs, action_masks=masks, deterministic=True)
    got = masked_argmax(net(obs), masks)
    np.testing.assert_array_equal(got, want)
    assert len(set(want.tolist())) == 3  # the check covers every action
    unmasked, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(net(obs).argmax(1), unmasked)


def test_onnx_has_a_dynamic_batch_and_one_file(export_dir: Path) -> None:
    import onnx

    model = onnx.load(str(export_dir / "policy.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch size
    assert sorted(p.name for p in export_dir.iterdir()) == ["manifest.json", "policy.onnx", "policy.pt"]
    net = OnnxPolicy(export_dir / "policy.onnx")
    dim = json.loads((export_dir / "manifest.json").read_text())["observation"]["dim"]
    for n in (1, 5, 200):
        assert net(np.zeros((n, dim), np.float32)).shape == (n, 3)


def test_manifest_describes_the_run(export_dir: Path, lm: LayerModel, cfg: EnvConfig) -> None:
    m = json.loads((export_dir / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["actions"] == ["SKIP", "EXECUTE", "LOOP"]
    assert m["model"] == {"name": "tiny-llama", "spec": "tiny-llama", "hash": "tinyhash", "num_layers": 4, "hidden_size": 16,
                          "model_type": "llama", "dtype": "float32"}
    assert m["program"] == {"block_size": 1, "loop_runs": 2, "num_blocks": 4}
    names = [row[0] for row in m["observation"]["layout"]]
    assert names == ["hidden", "pooled", "logit_lens", "block", "compute", "prev_action"]
    assert m["observation"]["dim"] == 16 + 16 + 3 + 5 + 1 + 4
    assert m["masks"] == {"num_layers": 4, "block_size": 1, "loop_runs": 2, "always_execute": [0], "max_loops": 1,
                          "max_compute_fraction": 1.25}
    assert m["compute_penalty"] == cfg.compute_penalty
    assert m["policy"]["files"]["onnx"]["opset"] >= 17
    assert m["versions"]["torch"] and m["versions"]["onnxruntime"]


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_runner_programs_and_scores_equal_the_env(export_dir: Path, lm, cfg, policy, backend: str) -> None:
    task = tiny_task()
    engine = LockstepEngine(lm, task, cfg, n_envs=len(task), shuffle=False)
    records, _ = rollout(engine, sb3_policy(policy, deterministic=True))
    runner = PolarRunner.load(export_dir, lm, backend=backend)
    env_runs = [r["runs"] for r in records]
    assert len({tuple(r) for r in env_runs}) > 1  # the policy adapts: a real check, not one program
    assert any(2 in r for r in env_runs) and any(0 in r for r in env_runs)

    # batched prompts (the contexts, right-padded) -> the env's programs
    toks = [tokenize_question(lm.tokenizer, ex).context for ex in task.examples]
    width = max(map(len, toks))
    ids = torch.zeros((len(toks), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(toks):
        ids[i, : len(t)], mask[i, : len(t)] = torch.tensor(t), 1
    programs = runner.program_for(ids, mask)
    assert [list(p.runs) for p in programs] == env_runs

    for ex, rec in zip(task.examples, records, strict=True):
        result = runner.score_choices(ex.context, ex.choices)
        assert list(result.program.runs) == rec["runs"] and str(result.program) == rec["program"]
        want = score_packed(lm, [ex], result.program)
        np.testing.assert_allclose(result.logprobs, want.logprobs[0].numpy(), atol=1e-5)
        lp = np.array(result.logprobs)
        margin = lp[ex.gold] - np.delete(lp, ex.gold).max()
        assert margin == pytest.approx(rec["margin"], abs=1e-4)
        assert (result.pred == ex.gold) == rec["correct"]


def test_generate_equals_core_generate_with_the_program(export_dir: Path, lm) -> None:
    runner = PolarRunner.load(export_dir, lm)
    prompts = [[5, 9, 13, 40, 41, 7], [12, 3, 88], [70, 71, 72, 73], [30, 31, 32, 33, 34, 35, 36, 37], [50]]
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    out = runner.generate(ids, max_new_tokens=6, attention_mask=mask)
    assert out.sequences.shape == (len(prompts), width + 6)
    assert len({p.runs for p in out.programs}) > 1  # rows decode under different programs
    for i, p in enumerate(prompts):
        alone = runner.program_for(torch.tensor([p]))[0]
        assert alone == out.programs[i]  # padding does not change the decision
        want = lm.generate(torch.tensor([p]), alone, 6)
        assert out.sequences[i, width - len(p):].tolist() == want[0].tolist()


def test_program_strings_and_fraction(export_dir: Path, lm) -> None:
    runner = PolarRunner.load(export_dir, lm)
    text, program = runner.generate_text("Question: Which planet? Answer:", max_new_tokens=4)
    assert isinstance(text, str) and isinstance(program, Program)
    assert program.runs[0] >= 1  # always_execute [0]
    assert sum(r == 2 for r in program.runs) <= 1  # max_loops 1
    assert program.num_calls <= 1.25 * 4 + 1e-9  # the budget


def test_a_prefilled_cache_must_fit_the_program(lm) -> None:
    from polar_rl.models.program_cache import ProgramCache

    program = Program.from_runs([1, 0, 2, 1], 4)
    with pytest.raises(ValueError, match="one slot per layer call"):
        lm.generate(torch.tensor([[5, 6]]), program, 2, prefilled=(ProgramCache(2), torch.zeros(1, 97)))
