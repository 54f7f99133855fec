"""Scoring rules of a multiple-choice result: the task term of the reward and the full model's result.

The environment's reward, the static search's objective and the cached full-model results all read
these, so they agree by construction. The reward modes themselves are listed in
:data:`polar_rl.config.REWARD_MODES`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from polar_rl.config import REWARD_MODES
from polar_rl.tasks.examples import MCExample
from polar_rl.tasks.multiple_choice import ChoiceScores

#: what a cached value means: bump when choice scoring, the margin or the gold log-prob change
SCORING = "rc: sum log p(choice | context), packed choices; margin = gold - best other; gold_logprob over choices; v1"
MARGIN_CLIP = 10.0  # nats; margin and gold log-prob rewards are clipped to [-10, 10]


@dataclass(frozen=True)
class Reference:
    """The full model's result on one example (computed once per example and kept)."""

    correct: bool
    margin: float
    gold_logprob: float  # log-prob of gold normalised over the choices


def choice_gold_logprob(scores: ChoiceScores) -> torch.Tensor:
    """(N,) log-prob of the gold choice normalised over the choices."""
    return torch.stack([g - torch.logsumexp(lps, 0) for g, lps in zip(scores.gold_logprob, scores.logprobs, strict=True)])


def task_term(mode: str, correct: torch.Tensor, margin: torch.Tensor, gold_logprob: torch.Tensor) -> torch.Tensor:
    """(N,) correctness term of the reward.

    margin: gold log-prob minus the best other, clipped to [-10, 10]; gold_logprob: choice-normalised
    log-prob of gold, clipped to [-10, 0]; gold_prob: its probability (a soft accuracy in [0, 1];
    a flat, uninformed answer earns 1/k, the chance level); correct: 1 / 0.
    """
    if mode == "margin":
        return margin.clamp(-MARGIN_CLIP, MARGIN_CLIP)
    if mode == "gold_logprob":
        return gold_logprob.clamp(-MARGIN_CLIP, 0.0)
    if mode == "gold_prob":
        return gold_logprob.exp()
    if mode == "correct":
        return correct.float()
    raise ValueError(f"unknown reward mode {mode!r}; expected one of {REWARD_MODES}")


def worst_reward(mode: str) -> float:
    """The lowest task term ``mode`` can give (what a non-finite episode earns)."""
    return {"correct": 0.0, "gold_prob": 0.0}.get(mode, -MARGIN_CLIP)


def example_hash(example: MCExample) -> str:
    """Hash of what the full model's result on ``example`` depends on: its content and the scoring rule."""
    payload = json.dumps({"context": example.context, "choices": list(example.choices), "gold": example.gold,
                          "scoring": SCORING}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


__all__ = ["MARGIN_CLIP", "SCORING", "Reference", "choice_gold_logprob", "example_hash", "task_term", "worst_reward"]
