"""Fixed skip / execute programs run over a fixed question set: packed, length-sorted chunks, and
programs that agree on a prefix share its layer calls. No observations, masks or policy.

:class:`ProgramScorer` runs block sequences and scores them by a task term
(:func:`polar_rl.tasks.rewards.task_term`); :func:`program_correct` scores many programs at once, per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.tasks.examples import MCExample
from polar_rl.tasks.multiple_choice import (
    PackedBatch,
    choice_scores,
    pack_questions,
    packed_inputs,
    packed_lengths,
)
from polar_rl.tasks.rewards import choice_gold_logprob, task_term


@dataclass
class _Chunk:
    batch: PackedBatch
    embedded: torch.Tensor  # (B, T, H)
    inputs: LayerInputs
    real: torch.Tensor  # (B, T) bool: real (non-pad) tokens


class ProgramScorer:
    """Runs block sequences over a fixed set of questions (packed, length-sorted chunks) and scores them
    by ``objective`` (a task term of the environment: gold_prob, margin or gold_logprob).

    ``layer_calls`` counts question x layer calls actually run.
    """

    def __init__(self, lm: LayerModel, examples: Sequence[MCExample], block_size: int = 1, chunk_size: int = 16,
                 objective: str = "gold_prob"):
        task_term(objective, torch.zeros(0), torch.zeros(0), torch.zeros(0))  # unknown names fail here
        self.lm, self.block_size, self.objective = lm, block_size, objective
        self.num_blocks = lm.num_layers // block_size
        # chunks of similar token length: 24 % padded tokens on the 96 ARC-Easy search questions, 42 % by characters
        tokens = packed_lengths(lm.tokenizer, examples)
        order = [examples[i] for i in sorted(range(len(examples)), key=lambda i: (tokens[i], i))]
        self.chunks: list[_Chunk] = []
        with torch.inference_mode():
            for lo in range(0, len(order), chunk_size):
                batch = pack_questions(lm.tokenizer, order[lo : lo + chunk_size], lm.pad_token_id).to(lm.device)
                hidden, inputs = packed_inputs(lm, batch)
                real = torch.arange(hidden.shape[1], device=hidden.device)[None] < batch.lengths[:, None]
                self.chunks.append(_Chunk(batch, hidden, inputs, real))
        self.n = len(order)
        self.layer_calls = 0

    @torch.inference_mode()
    def run_blocks(self, chunk: _Chunk, hidden: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
        for b in blocks:
            for layer in range(b * self.block_size, (b + 1) * self.block_size):
                hidden = self.lm.run_layer(layer, hidden, chunk.inputs)
        self.layer_calls += len(blocks) * self.block_size * hidden.shape[0]
        return hidden

    @torch.inference_mode()
    def score(self, chunk: _Chunk, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) objective and (B,) correct."""
        scores = choice_scores(self.lm, chunk.batch, self.lm.norm(hidden))
        correct = scores.correct
        return task_term(self.objective, correct, scores.margin, choice_gold_logprob(scores)), correct

    def states(self, skipped: set[int]) -> list[list[torch.Tensor]]:
        """Per chunk, the hidden state before each block 0..B-1 and after the last (B + 1 states)."""
        out = []
        for chunk in self.chunks:
            hidden, seq = chunk.embedded, [chunk.embedded]
            for b in range(self.num_blocks):
                if b not in skipped:
                    hidden = self.run_blocks(chunk, hidden, [b])
                seq.append(hidden)
            out.append(seq)
        return out

    def evaluate_from(
        self, states: list[list[torch.Tensor]], start: int, blocks: Sequence[int], keep: bool = False
    ) -> tuple[float, float, list[list[torch.Tensor]] | None]:
        """Mean (objective, accuracy) of: the state before block ``start``, then ``blocks`` (ascending,
        all > ``start``; ``start`` itself is skipped). With ``keep``, also the new program's states."""
        prob = acc = 0.0
        kept: list[list[torch.Tensor]] | None = [] if keep else None
        todo = set(blocks)
        for chunk, seq in zip(self.chunks, states, strict=True):
            hidden = seq[start]
            new_seq = seq[: start + 1] + [hidden]
            for b in range(start + 1, self.num_blocks):
                if b in todo:
                    hidden = self.run_blocks(chunk, hidden, [b])
                new_seq.append(hidden)
            p, c = self.score(chunk, hidden)
            prob += float(p.sum())
            acc += float(c.float().sum())
            if kept is not None:
                kept.append(new_seq)
        return prob / self.n, acc / self.n, kept


def program_correct(lm: LayerModel, examples: Sequence[MCExample], programs: dict[str, list[int]],
                    block_size: int = 1, chunk_size: int = 16) -> dict[str, dict[str, bool]]:
    """Per program, per example id: is its answer right under each skip/execute program (run counts
    0 / 1 per block)?

    One pass of the full program per chunk; each program branches off it at its first skipped block,
    so programs that agree on a prefix share its layer calls."""
    if not examples:
        raise ValueError("no examples to compare static programs on")
    scorer = ProgramScorer(lm, examples, block_size, chunk_size)
    B = scorer.num_blocks
    for name, runs in programs.items():
        if len(runs) != B or any(r not in (0, 1) for r in runs):
            raise ValueError(f"program {name!r}: {runs} is not {B} run counts of 0 or 1")
    first_skip = {name: runs.index(0) if 0 in runs else B for name, runs in programs.items()}
    correct: dict[str, dict[str, bool]] = {name: {} for name in programs}
    last = max(first_skip.values(), default=0)
    with torch.inference_mode():
        for chunk in scorer.chunks:
            hidden = chunk.embedded
            for b in range(last + 1):
                for name, runs in programs.items():
                    if first_skip[name] == b:
                        rest = [x for x in range(b + 1, B) if runs[x]]
                        _, ok = scorer.score(chunk, scorer.run_blocks(chunk, hidden, rest))  # (B,) bool
                        correct[name].update(zip(chunk.batch.example_ids, map(bool, ok.tolist()), strict=True))
                if b < last:
                    hidden = scorer.run_blocks(chunk, hidden, [b])
    return correct


def program_accuracies(lm: LayerModel, examples: Sequence[MCExample], programs: dict[str, list[int]],
                       block_size: int = 1, chunk_size: int = 16) -> dict[str, float]:
    """Accuracy of each skip/execute program on ``examples`` (:func:`program_correct`, averaged)."""
    got = program_correct(lm, examples, programs, block_size, chunk_size)
    return {name: sum(ok.values()) / len(examples) for name, ok in got.items()}
