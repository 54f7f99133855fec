"""Multiple-choice scoring as lm-eval-harness "rc" does it, with packed choices.

Each choice is scored by the sum of the log-probs of its continuation tokens given the context.
Instead of running context + choice once per choice, a question is *packed* into one sequence:

    [context tokens][choice 0 tokens][choice 1 tokens]...

Each choice gets the positions it would have right after the context, and a block attention mask
lets a choice token see the context and the earlier tokens of its own choice only. Per-choice
log-probs equal the naive computation, while the shared context is processed once.

Accuracy is the argmax of the summed log-prob (lm-eval's ``acc``); no length-normalised accuracy
(``acc_norm``) is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from polar_rl.config import shorten
from polar_rl.program import Program
from polar_rl.tasks.examples import MCExample


@dataclass(frozen=True)
class TokenizedQuestion:
    """Token ids of one question: the context once, then each choice's continuation."""

    context: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]

    @property
    def packed_len(self) -> int:
        return len(self.context) + sum(len(c) for c in self.choices)

    @property
    def positions(self) -> int:
        """Positions the packed row needs: every choice starts right after the context."""
        return len(self.context) + max(len(c) for c in self.choices)


def tokenize_question(tokenizer: Any, example: MCExample) -> TokenizedQuestion:
    """lm-eval's split: encode context and context+continuation, the continuation is the tail."""
    return _tokenize(tokenizer, example.context, example.choices)


@lru_cache(maxsize=65536)
def _tokenize_cached(tok_id: int, context: str, choices: tuple[str, ...]) -> TokenizedQuestion:
    tokenizer = _TOKENIZERS[tok_id]
    ctx = context
    # lm-eval moves trailing whitespace of the context onto the continuation
    moved = len(ctx) - len(ctx.rstrip(" "))
    conts = tuple(ctx[len(ctx) - moved :] + c for c in choices) if moved else choices
    ctx = ctx[: len(ctx) - moved] if moved else ctx
    ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    wholes = tokenizer([ctx + c for c in conts], add_special_tokens=False)["input_ids"]
    choice_ids = []
    for cont, whole in zip(conts, wholes, strict=True):
        tail = whole[len(ctx_ids) :]
        if not tail:  # tokenisation merged across the boundary: encode the continuation alone
            tail = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not tail:
            raise ValueError(f"choice {shorten(cont)} tokenises to no tokens")
        choice_ids.append(tuple(tail))
    return TokenizedQuestion(tuple(ctx_ids), tuple(choice_ids))


_TOKENIZERS: dict[int, Any] = {}


def _tokenize(tokenizer: Any, context: str, choices: tuple[str, ...]) -> TokenizedQuestion:
    _TOKENIZERS.setdefault(id(tokenizer), tokenizer)
    return _tokenize_cached(id(tokenizer), context, tuple(choices))


@dataclass
class PackedBatch:
    """Many questions packed and right-padded into one (B, T) batch.

    input_ids, position_ids: (B, T). allowed: (B, T, T) bool block mask. context_last: (B,) index
    of each question's last context token. For the N choice tokens of the whole batch:
    pred_row / pred_pos (N,) where the predicting hidden state sits, target (N,) the token, and
    choice_of_token (N,) the global choice index. choice_row (C,) the question of each choice,
    choice_chars (C,) its character length. gold (B,), n_choices (B,).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    context_last: torch.Tensor
    pred_row: torch.Tensor
    pred_pos: torch.Tensor
    target: torch.Tensor
    choice_of_token: torch.Tensor
    choice_row: torch.Tensor
    choice_chars: torch.Tensor
    gold: torch.Tensor
    n_choices: torch.Tensor
    lengths: torch.Tensor  # (B,) real (non-pad) tokens per row
    num_tokens: int  # real tokens in the whole batch
    example_ids: tuple[str, ...] = ()  # (B,) the question of each row
    row_parts: tuple[tuple[int, int], ...] = ()  # (B,) (context tokens, longest choice's tokens) per row

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            **{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        )


def packed_lengths(tokenizer: Any, examples: Sequence[MCExample]) -> list[int]:
    """Tokens in each question's packed row (context + every choice), e.g. to batch rows of similar length."""
    return [tokenize_question(tokenizer, ex).packed_len for ex in examples]


def pack_questions(tokenizer: Any, examples: Sequence[MCExample], pad_token_id: int = 0) -> PackedBatch:
    """Pack each question's context and choices into one row; right-pad rows to the longest."""
    toks = [tokenize_question(tokenizer, ex) for ex in examples]
    width = max(t.packed_len for t in toks)
    b = len(toks)
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    segment = torch.full((b, width), -2, dtype=torch.long)  # -1 context, k choice k, -2 pad
    context_last = torch.zeros(b, dtype=torch.long)
    pred_row: list[int] = []
    pred_pos: list[int] = []
    target: list[int] = []
    choice_of_token: list[int] = []
    choice_row: list[int] = []
    choice_chars: list[int] = []
    num_tokens = 0
    lengths: list[int] = []
    for r, (tq, ex) in enumerate(zip(toks, examples, strict=True)):
        c = len(tq.context)
        input_ids[r, :c] = torch.tensor(tq.context)
        position_ids[r, :c] = torch.arange(c)
        segment[r, :c] = -1
        context_last[r] = c - 1
        start = c
        for k, (ids, text) in enumerate(zip(tq.choices, ex.choices, strict=True)):
            n = len(ids)
            input_ids[r, start : start + n] = torch.tensor(ids)
            position_ids[r, start : start + n] = torch.arange(c, c + n)
            segment[r, start : start + n] = k
            gi = len(choice_row)
            for j in range(n):
                pred_row.append(r)
                pred_pos.append(c - 1 if j == 0 else start + j - 1)
                target.append(ids[j])
                choice_of_token.append(gi)
            choice_row.append(r)
            choice_chars.append(max(len(text), 1))
            start += n
        num_tokens += start
        lengths.append(start)
    idx = torch.arange(width)
    causal = idx[None, :] <= idx[:, None]  # (T, T) key <= query
    q_seg, k_seg = segment[:, :, None], segment[:, None, :]  # (B, T, 1), (B, 1, T)
    same_choice = (q_seg == k_seg) & (q_seg >= 0)
    sees = (k_seg == -1) & (q_seg != -2)  # every real token sees the context
    allowed = causal[None] & (sees | same_choice)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # pads see themselves: no empty rows
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        allowed=allowed,
        context_last=context_last,
        pred_row=torch.tensor(pred_row),
        pred_pos=torch.tensor(pred_pos),
        target=torch.tensor(target),
        choice_of_token=torch.tensor(choice_of_token),
        choice_row=torch.tensor(choice_row),
        choice_chars=torch.tensor(choice_chars, dtype=torch.float32),
        gold=torch.tensor([ex.gold for ex in examples]),
        n_choices=torch.tensor([len(ex.choices) for ex in examples]),
        lengths=torch.tensor(lengths),
        num_tokens=num_tokens,
        example_ids=tuple(ex.id for ex in examples),
        row_parts=tuple((len(t.context), t.positions - len(t.context)) for t in toks),
    )


@dataclass
class ChoiceScores:
    """Per-question results. logprobs[r] is a (n_choices,) tensor of summed log-probs."""

    logprobs: list[torch.Tensor]
    chars: list[torch.Tensor]
    gold: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        return torch.stack([lp.argmax() for lp in self.logprobs])

    @property
    def correct(self) -> torch.Tensor:
        return self.pred == self.gold

    @property
    def margin(self) -> torch.Tensor:
        """Gold log-prob minus the best other choice's (> 0 iff correct)."""
        out = []
        for lp, g in zip(self.logprobs, self.gold.tolist(), strict=True):
            others = torch.cat([lp[:g], lp[g + 1 :]])
            out.append(lp[g] - others.max())
        return torch.stack(out)

    @property
    def gold_logprob(self) -> torch.Tensor:
        return torch.stack([lp[g] for lp, g in zip(self.logprobs, self.gold.tolist(), strict=True)])


def choice_scores(lm: Any, batch: PackedBatch, normed: torch.Tensor) -> ChoiceScores:
    """Final-normed hidden states (B, T, H) of a packed batch -> per-choice summed log-probs."""
    device = normed.device
    rows, pos = batch.pred_row.to(device), batch.pred_pos.to(device)
    h = normed[rows, pos]  # (N, H): only the positions that predict a choice token
    logp = torch.log_softmax(lm.head(h).float(), dim=-1)  # (N, V)
    tok_lp = logp.gather(1, batch.target.to(device)[:, None])[:, 0]  # (N,)
    per_choice = torch.zeros(len(batch.choice_row), device=device).index_add_(
        0, batch.choice_of_token.to(device), tok_lp
    )  # (C,)
    per_choice, chars = per_choice.cpu(), batch.choice_chars
    counts = batch.n_choices.tolist()
    return ChoiceScores(list(per_choice.split(counts)), list(chars.split(counts)), batch.gold.clone())


def _check_rows_fit(lm: Any, ids: Sequence[str], parts: Sequence[tuple[int, int]]) -> None:
    """InputTooLongError naming the longest row when it needs more positions than ``lm`` takes."""
    limit = getattr(lm, "max_positions", None)
    if limit is None or not parts:
        return
    need = [c + n for c, n in parts]
    over = sum(n > limit for n in need)
    if over:
        worst = max(range(len(need)), key=need.__getitem__)
        c, n = parts[worst]
        many = f" (the longest of {over} of {len(need)} questions over the limit)" if over > 1 else ""
        lm.check_length(need[worst], f"example {shorten(ids[worst])}{many}: context ({c:,} tokens) + longest "
                                     f"choice ({n:,} tokens)")


def check_fits(lm: Any, examples: Sequence[MCExample]) -> None:
    """Refuse, before any layer runs, questions whose packed row needs more positions (context + longest
    choice) than ``lm.max_positions``: one InputTooLongError (a ConfigError) naming the longest question.

    It tokenises as the scorer does (the same cache), so checking a set up front costs nothing later.
    """
    toks = [tokenize_question(lm.tokenizer, ex) for ex in examples]
    _check_rows_fit(lm, [ex.id for ex in examples], [(len(t.context), t.positions - len(t.context)) for t in toks])


def packed_inputs(lm: Any, batch: PackedBatch) -> tuple[torch.Tensor, Any]:
    """Embed a packed batch: (B, T, H) hidden states and the LayerInputs for its layer calls.

    A row longer than the model takes is refused here, before any layer runs (:func:`check_fits`).
    """
    _check_rows_fit(lm, batch.example_ids, batch.row_parts)
    device = lm.device
    ids, pos = batch.input_ids.to(device), batch.position_ids.to(device)
    hidden = lm.embed(ids, pos)
    return hidden, lm.layer_inputs(hidden, pos, lm.mask_from_allowed(batch.allowed.to(device)))


@torch.inference_mode()
def score_packed(lm: Any, examples: Sequence[MCExample], program: Program | None = None) -> ChoiceScores:
    """Score questions under a program with packed choices (one row per question); a row longer than the
    model takes is refused before any layer runs."""
    batch = pack_questions(lm.tokenizer, examples, lm.pad_token_id)
    hidden, inputs = packed_inputs(lm, batch)
    hidden = lm.run_layers(hidden, lm.program_calls(program), inputs)
    return choice_scores(lm, batch, lm.norm(hidden))


@torch.inference_mode()
def score_naive(
    lm: Any, examples: Sequence[MCExample], program: Program | None = None
) -> tuple[ChoiceScores, int]:
    """Reference: one right-padded row per (question, choice). Returns scores and tokens processed."""
    check_fits(lm, examples)
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    chars: list[list[float]] = []
    for ex in examples:
        tq = tokenize_question(lm.tokenizer, ex)
        chars.append([float(max(len(c), 1)) for c in ex.choices])
        for cont in tq.choices:
            rows.append(list(tq.context) + list(cont))
            spans.append((len(tq.context), len(cont)))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), lm.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    logp = torch.log_softmax(lm.logits(ids, mask, program=program).float(), dim=-1).cpu()
    sums = []
    for i, (c, n) in enumerate(spans):
        pred = logp[i, c - 1 : c + n - 1]  # (n, V)
        sums.append(pred.gather(1, ids[i, c : c + n, None])[:, 0].sum())
    per_choice = torch.stack(sums)
    counts = [len(ex.choices) for ex in examples]
    scores = ChoiceScores(
        list(per_choice.split(counts)),
        [torch.tensor(c) for c in chars],
        torch.tensor([ex.gold for ex in examples]),
    )
    return scores, int(mask.sum())
