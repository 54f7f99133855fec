"""One block of N partial programs: the step the lockstep engine and the serving runtime share.

Per block, each row's action becomes a run count (:func:`block_runs`: SKIP 0, EXECUTE 1, LOOP
``loop_runs``; a row whose program ended runs nothing), then :meth:`BlockRunner.step` runs the block
once as a batched call over the rows with a run left, again over those with two left, ...; every
row that ran is checked, and a non-finite state is zeroed and reported so it never reaches the
policy. :class:`PartialPrograms` records the decisions (what the observation and the masks read).
``envs/engine.py`` and ``polar_rl/serving/runner.py`` both go through these, so a program executes
the same way in training and in serving by construction.

Right-padded rows (the engine's packed questions) run in length buckets, each cropped to its
longest row; without lengths (serving's left-padded prompts) the rows run as one group at full
width. A KV hook, when given, receives the keys and values of every layer call (serving fills its
per-slot cache with them during the prefill); without it no cache is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch

from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.models.program_cache import ProgramCache
from polar_rl.program import Action

PAD_SLACK = 0.25  # a length bucket's padded tokens stay under this share of its real tokens

#: called after each layer call with (batch rows, keys, values); keys, values: (R, kv_heads, T, head_dim)
KVHook = Callable[[list[int], torch.Tensor, torch.Tensor], None]


@dataclass
class PartialPrograms:
    """N programs decided block by block, all standing at the same block."""

    runs: list[list[int]]  # per row, the run count of each block decided so far
    calls: np.ndarray  # (N,) float, layer calls so far
    loops: np.ndarray  # (N,) int, LOOP decisions so far
    prev_action: np.ndarray  # (N,) int, the last action (-1 before the first)
    failed: np.ndarray  # (N,) bool, a non-finite state ended the row's program

    @classmethod
    def start(cls, n: int, **fields: Any) -> Self:
        """N empty programs (``fields``: a subclass's own fields)."""
        return cls(runs=[[] for _ in range(n)], calls=np.zeros(n), loops=np.zeros(n, dtype=int),
                   prev_action=np.full(n, -1), failed=np.zeros(n, dtype=bool), **fields)

    def record(self, actions: np.ndarray, runs: np.ndarray, block_size: int) -> None:
        """Append one block's (N,) actions and their (N,) run counts."""
        for row, r in zip(self.runs, runs.tolist(), strict=True):
            row.append(r)
        self.calls += runs * block_size
        self.loops += actions == Action.LOOP
        self.prev_action = actions.astype(int)


def block_runs(actions: np.ndarray, loop_runs: int, ended: np.ndarray) -> np.ndarray:
    """(N,) int runs of the block: SKIP 0, EXECUTE 1, LOOP ``loop_runs``; 0 where ``ended`` (N,) bool."""
    runs = np.where(actions == Action.LOOP, loop_runs, actions).astype(int)
    runs[ended] = 0
    return runs


def length_buckets(lengths: torch.Tensor, rows: Sequence[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Group rows (longest first) so each group's padded size is <= (1 + slack) x its real tokens."""
    n = lengths.tolist()
    buckets: list[list[int]] = []
    real = 0  # real tokens of the last bucket
    for i in sorted(rows, key=lambda i: -n[i]):
        if buckets and n[buckets[-1][0]] * (len(buckets[-1]) + 1) <= (1 + slack) * (real + n[i]):
            buckets[-1].append(i)
            real += n[i]
        else:
            buckets.append([i])
            real = n[i]
    return buckets


class BlockRunner:
    """Runs blocks of ``block_size`` layers on chosen rows of a (N, T, H) batch; times the layer calls."""

    def __init__(self, lm: LayerModel, block_size: int, slack: float = PAD_SLACK) -> None:
        self.lm, self.block_size, self.slack = lm, block_size, slack
        self.layer_seconds = 0.0  # wall time inside layer calls

    def step(self, block: int, hidden: torch.Tensor, inputs: LayerInputs, runs: np.ndarray, rows: np.ndarray,
             lengths: torch.Tensor | None = None, on_kv: KVHook | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Run ``block`` ``runs[i]`` times on each row i of ``rows`` (R,): one batched call per repeat.

        Returns the (N, T, H) states, non-finite rows zeroed, and (R,) bool: which rows stayed finite.
        ``lengths`` and ``on_kv`` as in :meth:`run_rows`.
        """
        if rows.size == 0:
            return hidden, np.ones(0, dtype=bool)
        todo = runs[rows]  # (R,)
        for rep in range(int(todo.max())):
            hidden = self.run_rows(block, hidden, inputs, rows[todo > rep].tolist(), lengths, on_kv)
        return hidden, zero_nonfinite(hidden, rows)

    def run_rows(self, block: int, hidden: torch.Tensor, inputs: LayerInputs, rows: list[int],
                 lengths: torch.Tensor | None = None, on_kv: KVHook | None = None) -> torch.Tensor:
        """Run ``block`` once on ``rows`` of (N, T, H) ``hidden`` (updated in place or replaced: use the result).

        lengths: (N,) real tokens of right-padded rows, which then run in length buckets cropped to their
        longest row (padded tokens cost as much as real ones); None: one group at full width.
        """
        full = hidden.shape[1]
        groups = [rows] if lengths is None else length_buckets(lengths, rows, self.slack)
        for group in groups:
            width = full if lengths is None else int(lengths[group[0]])
            if len(group) == hidden.shape[0] and width == full:  # every row, uncropped: no gather
                hidden = self._layers(block, hidden, inputs, list(range(len(group))) if on_kv is not None else group, on_kv)
                continue
            idx = torch.tensor(group, device=hidden.device)
            sub, sub_inputs = hidden.index_select(0, idx), inputs.select(idx)  # (R, T, H)
            if width < full:
                sub, sub_inputs = sub[:, :width], sub_inputs.narrow(width)
            hidden[idx, :width] = self._layers(block, sub, sub_inputs, group, on_kv)
        return hidden

    def _layers(self, block: int, hidden: torch.Tensor, inputs: LayerInputs, rows: list[int],
                on_kv: KVHook | None) -> torch.Tensor:
        """The block's layer calls on a (R, T, H) batch whose rows are ``rows`` of the full batch."""
        t0 = time.perf_counter()
        for layer in range(block * self.block_size, (block + 1) * self.block_size):
            if on_kv is None:
                hidden = self.lm.run_layer(layer, hidden, inputs)
            else:
                cache = ProgramCache(1)  # receives this call's keys and values
                hidden = self.lm.run_layer(layer, hidden, inputs, cache)
                on_kv(rows, cache.keys[0], cache.values[0])  # type: ignore[arg-type]
        self.layer_seconds += time.perf_counter() - t0
        return hidden


def zero_nonfinite(hidden: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """(R,) bool: which ``rows`` of (N, T, H) ``hidden`` are finite; the others are zeroed in place."""
    idx = torch.as_tensor(rows, device=hidden.device)
    ok = torch.isfinite(hidden[idx]).flatten(1).all(1).cpu().numpy()  # (R,)
    if not ok.all():
        hidden[idx[torch.as_tensor(~ok, device=hidden.device)]] = 0.0
    return ok
