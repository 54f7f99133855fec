"""Tiny, fast pieces for the serving tests: a character tokenizer, a tiny model with it, a small
multiple-choice task, and an untrained MaskablePPO whose actor is scaled up so its greedy actions
are well separated (no near-ties) and mix SKIP, EXECUTE and LOOP."""

from __future__ import annotations

from typing import Any

import torch

from polar_rl.config import EnvConfig
from polar_rl.models.adapter import LayerModel
from polar_rl.tasks.examples import MCExample, Task

VOCAB = 97


class CharTokenizer:
    """One token per character (ids 3..96); 0 = pad, 1 = eos."""

    pad_token_id, eos_token_id = 0, 1

    def _encode(self, text: str) -> list[int]:
        return [3 + ord(c) % (VOCAB - 3) for c in text]

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self._encode(text)}
        return {"input_ids": [self._encode(t) for t in text]}

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + (int(i) - 3) % 94) for i in ids if int(i) >= 3)


def tiny_lm(num_layers: int = 4, name: str = "tiny-llama", model_hash: str = "tinyhash") -> LayerModel:
    from tests.conftest import tiny_hf_model

    return LayerModel(tiny_hf_model("llama", num_layers), CharTokenizer(), name=name, model_hash=model_hash)


QUESTIONS = [
    ("Which planet is closest to the Sun?", ["Mercury", "Venus", "Earth", "Mars"], 0),
    ("What do plants take from the air?", ["oxygen", "carbon dioxide", "nitrogen"], 1),
    ("Water freezes at what temperature?", ["100", "50", "0", "-40"], 2),
    ("Which of these is a mammal?", ["shark", "frog", "eagle", "whale"], 3),
    ("What force pulls objects down?", ["gravity", "friction"], 0),
    ("Which is a gas at room temperature?", ["iron", "helium", "salt"], 1),
]


def tiny_task(split: str = "val") -> Task:
    examples = tuple(MCExample(id=f"q{i}", context=f"Question: {q}\nAnswer:", choices=tuple(f" {c}" for c in cs), gold=g)
                     for i, (q, cs, g) in enumerate(QUESTIONS))
    return Task(name="tiny", split=split, kind="multiple_choice", examples=examples)


def env_config(**kw: Any) -> EnvConfig:
    base = dict(block_size=1, loop_runs=2, n_envs=3, obs_pooled=True, obs_logit_lens=True, always_execute=[0],
                max_loops=1, max_compute_fraction=1.25, prefix_cache_gb=0.0)
    base.update(kw)
    return EnvConfig(**base)


def tiny_policy(lm: LayerModel, cfg: EnvConfig, seed: int = 2) -> Any:
    """A MaskablePPO on the tiny env with a scaled-up, random actor (seed 2: on the tiny task its
    greedy programs are 2---, 2x--, 2xxx and 2x-x, so every action and several programs occur)."""
    from sb3_contrib import MaskablePPO

    from polar_rl.envs.vec_env import LayerProgramVecEnv

    venv = LayerProgramVecEnv(lm, tiny_task("train"), config=cfg, seed=seed)
    model = MaskablePPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=seed, device="cpu",
                        policy_kwargs={"net_arch": [32, 32]})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.policy.mlp_extractor.policy_net[0].weight[:, : 2 * lm.hidden_size] *= 10  # hidden + pooled matter
        head = model.policy.action_net
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 3.0)
        head.bias.copy_(torch.tensor([0.0, 3.0, 0.0]))
    return model
