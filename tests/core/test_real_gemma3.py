"""A second real model: Gemma 3 270M (base, Q4_K_M GGUF shipped offline in pip chunk packages).

Gemma 3 is the family whose per-layer-type inputs broke the old generic path: 18 layers, five
sliding-window layers (window 512) per full-attention layer, one rotary embedding per layer type,
a scaled embedding. Converted once into the cache folder like SmolLM2 (first load ~2.5 min).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polar_rl.models import load_model
from polar_rl.program import Program
from tests.agents.helpers import run_dirs, run_polar_rl

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gemma3():
    return load_model("gemma3-270m")


def _long_ids(lm, n: int) -> torch.Tensor:
    text = " ".join(f"Item {i} is followed by item {i + 1}." for i in range(n))
    return lm.tokenizer(text, return_tensors="pt")["input_ids"][:, :n]


def test_layout_and_identity_parity_with_padding(gemma3):
    lm = gemma3
    assert (lm.model_type, lm.num_layers, lm.attn_implementation) == ("gemma3_text", 18, "sdpa")
    assert lm.layer_types.count("full_attention") == 3 and lm.sliding_window == 512
    enc = lm.tokenizer(["Question: Which gas do plants absorb?\nAnswer:", "Hi"], return_tensors="pt", padding=True)
    positions = lm.positions_from_mask(enc["attention_mask"])  # left padding: positions count real tokens
    with torch.inference_mode():
        stock = lm.model(**enc, position_ids=positions).logits
    ours = lm.logits(enc["input_ids"], enc["attention_mask"], program=Program.full(18))
    valid = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], stock[valid], rtol=0, atol=0)


def test_past_the_sliding_window(gemma3):
    """600 tokens > window 512: identity and custom-mask (decoding) paths equal the stock forward."""
    lm = gemma3
    ids = _long_ids(lm, 600)
    assert ids.shape[1] == 600
    with torch.inference_mode():
        stock = lm.model(input_ids=ids).logits
    torch.testing.assert_close(lm.logits(ids), stock, rtol=0, atol=0)
    _, step = lm.generate(ids, max_new_tokens=1, use_cache=False, return_logits=True)
    torch.testing.assert_close(step[:, 0], stock[:, -1], rtol=0, atol=1e-3)


def test_cached_generation_under_a_program_past_the_window(gemma3):
    lm = gemma3
    program = Program.from_runs([0] + [1] * 8 + [2, 2] + [1] * 5 + [0, 1], 18)  # skip 0, loop 9-10, skip 16
    ids = _long_ids(lm, 520)
    cached, lc = lm.generate(ids, program, max_new_tokens=3, return_logits=True)
    plain, lp = lm.generate(ids, program, max_new_tokens=3, use_cache=False, return_logits=True)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(lc, lp, atol=2e-3, rtol=0)


def test_training_smoke_run(tmp_path):
    """The smoke job (configs/smoke.yaml, one PPO update, smaller eval/test/search sets) end to end
    through the CLI on Gemma 3 (3 blocks of 6 layers)."""
    output_dir = tmp_path / "runs"
    proc = run_polar_rl(["train", "--config", "configs/smoke.yaml", "--model.name", "gemma3-270m",
                         "--env.block_size", "6", "--training.total_timesteps", "64", "--training.eval_freq", "64",
                         "--training.checkpoint_freq", "64", "--task.eval_limit", "4", "--task.test_limit", "8",
                         "--baselines.search_limit", "4", "--output_dir", output_dir], timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = run_dirs(output_dir)
    result = json.loads((Path(run) / "eval.json").read_text())
    assert result["model"] == "gemma3-270m" and result["n"] == 8 and result["num_timesteps"] == 64
    assert {"full", "policy", "policy_static"} <= set(result["methods"])
    assert 0 <= result["methods"]["full"]["accuracy"] <= 1
