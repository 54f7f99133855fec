"""The observation featuriser: hidden state -> feature vector.

One function shared by the environment, the policy export and the serving runtime, so a trained
policy sees the same features everywhere. Layout (in order; sizes for H = hidden size, B = number
of blocks):

=================  ======  ==========================================================
name               size    meaning
=================  ======  ==========================================================
hidden             H       final-normed hidden state at the last context token
pooled (opt.)      H       final-normed mean of the hidden states over context tokens
logit_lens (opt.)  3       the state read through the head at the last context token:
                           entropy / log(V), top-1 probability, (top-1 - top-2 logprob)/20
block              B + 1   one-hot index of the block about to be decided (B = done)
compute            1       layer calls so far / num_layers
prev_action        4       one-hot previous action: none, SKIP, EXECUTE, LOOP
=================  ======  ==========================================================

Every value is clipped to [-clip, clip], so the observation space has finite bounds.
:func:`observe_programs` reads these parts off a batch of partial programs; the lockstep engine and
the serving runtime both call it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from polar_rl.block_step import PartialPrograms
    from polar_rl.models.adapter import LayerModel

LENS_FEATURES = 3
PREV_ACTIONS = 4  # none + SKIP / EXECUTE / LOOP


@dataclass(frozen=True)
class ObservationSpec:
    hidden_size: int
    num_blocks: int
    pooled: bool = False
    logit_lens: bool = True
    clip: float = 50.0

    @property
    def layout(self) -> dict[str, slice]:
        sizes = [("hidden", self.hidden_size)]
        if self.pooled:
            sizes.append(("pooled", self.hidden_size))
        if self.logit_lens:
            sizes.append(("logit_lens", LENS_FEATURES))
        sizes += [("block", self.num_blocks + 1), ("compute", 1), ("prev_action", PREV_ACTIONS)]
        out, start = {}, 0
        for name, n in sizes:
            out[name] = slice(start, start + n)
            start += n
        return out

    @property
    def dim(self) -> int:
        return next(reversed(self.layout.values())).stop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObservationSpec:
        return cls(**d)


def logit_lens(head_logits: torch.Tensor) -> torch.Tensor:
    """(N, V) logits at the last context token -> (N, 3) entropy/logV, top-1 prob, top-2 gap / 20."""
    logp = torch.log_softmax(head_logits.float(), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1) / math.log(head_logits.shape[-1])
    top2 = logp.topk(2, dim=-1).values
    gap = ((top2[:, 0] - top2[:, 1]).clamp(0, 20) / 20).nan_to_num(0.0)
    return torch.stack([entropy, top2[:, 0].exp(), gap], dim=-1)


def featurize(
    spec: ObservationSpec,
    hidden_last: torch.Tensor,
    block: torch.Tensor,
    compute: torch.Tensor,
    prev_action: torch.Tensor,
    pooled: torch.Tensor | None = None,
    lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Assemble (N, dim) float32 features.

    hidden_last, pooled: (N, H) final-normed states. lens: (N, 3) from ``logit_lens``.
    block: (N,) in [0, B]. compute: (N,) calls / num_layers. prev_action: (N,) in [-1, 2] (-1 = none).
    """
    n = hidden_last.shape[0]
    parts = [hidden_last.float()]
    if spec.pooled:
        if pooled is None:
            raise ValueError("ObservationSpec.pooled is set but no pooled state was given")
        parts.append(pooled.float())
    if spec.logit_lens:
        if lens is None:
            raise ValueError("ObservationSpec.logit_lens is set but no logit-lens features were given")
        parts.append(lens.float())
    device = hidden_last.device
    parts.append(torch.nn.functional.one_hot(block.long().to(device), spec.num_blocks + 1).float())
    parts.append(compute.float().to(device).reshape(n, 1))
    parts.append(torch.nn.functional.one_hot(prev_action.long().to(device) + 1, PREV_ACTIONS).float())
    return torch.cat(parts, dim=-1).nan_to_num(0.0).clamp(-spec.clip, spec.clip)


def context_mask(last: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T) bool: the tokens up to each row's last context token ``last`` (N,), for right-padded rows."""
    return torch.arange(width, device=last.device)[None] <= last[:, None]


def observe_programs(lm: LayerModel, spec: ObservationSpec, hidden: torch.Tensor, last: torch.Tensor,
                     context: torch.Tensor | None, block: int, programs: PartialPrograms) -> np.ndarray:
    """(N, D) float32 observations of N partial programs about to decide ``block`` (``num_blocks``: done).

    hidden: (N, T, H) states; last: (N,) index of each row's last context token (the features' token);
    context: (N, T) bool, the tokens the pooled feature averages (needed when ``spec.pooled``).
    A row whose program failed (non-finite state) observes zeros.
    """
    n = hidden.shape[0]
    normed = lm.norm(hidden[torch.arange(n, device=hidden.device), last])  # (N, H)
    pooled = lens = None
    if spec.pooled:
        if context is None:
            raise ValueError("ObservationSpec.pooled is set but no context mask was given")
        pooled = lm.norm((hidden * context[..., None]).sum(1) / context.sum(1, keepdim=True))  # (N, H)
    if spec.logit_lens:
        lens = logit_lens(lm.head(normed))  # (N, 3)
    obs = featurize(spec, normed, torch.full((n,), block), torch.tensor(programs.calls / lm.num_layers),
                    torch.tensor(programs.prev_action), pooled, lens)
    obs[torch.as_tensor(programs.failed, device=obs.device)] = 0.0
    return obs.cpu().numpy()
