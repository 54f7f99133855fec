"""Generative scoring (gsm8k): greedy answer under a program, final number extracted, exact match."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polar_rl.config import shorten
from polar_rl.program import Program
from polar_rl.tasks.examples import GenExample, TaskError
from polar_rl.tasks.generative import extract_number, truncate_at_stop


@dataclass(frozen=True)
class GenResult:
    example_id: str
    text: str  # the generated answer, cut at the first stop sequence
    prediction: str | None  # the extracted final number
    correct: bool


def stop_token_ids(tokenizer: Any, stops: Sequence[str]) -> list[int]:
    """EOS plus every stop sequence that is a single token (longer ones are cut after decoding)."""
    ids = {int(tokenizer.eos_token_id)} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    for stop in stops:
        enc = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.add(int(enc[0]))
    return sorted(ids)


def check_prompts_fit(lm: Any, ids: Sequence[str], prompt_tokens: Sequence[int], max_new_tokens: int) -> None:
    """InputTooLongError naming the longest prompt when it plus ``max_new_tokens`` exceeds the model's
    positions, and TaskError for a prompt of no tokens (nothing to continue from)."""
    empty = next((i for i, n in enumerate(prompt_tokens) if n == 0), None)
    if empty is not None:
        raise TaskError(f"example {shorten(ids[empty])}: the prompt tokenises to no tokens; nothing to generate from")
    if prompt_tokens:
        worst = max(range(len(prompt_tokens)), key=prompt_tokens.__getitem__)
        lm.check_length(prompt_tokens[worst] + max_new_tokens,
                        f"example {shorten(ids[worst])}: prompt ({prompt_tokens[worst]:,} tokens) + max_new_tokens "
                        f"{max_new_tokens:,}")


@torch.inference_mode()
def generate_answers(
    lm: Any,
    examples: Sequence[GenExample],
    program: Program | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> list[GenResult]:
    """Greedy answers under ``program`` (None = full model), left-padded batches, cached decoding.

    Every prompt is tokenised first: one that leaves no room for ``max_new_tokens`` within the model's
    positions is refused (InputTooLongError) before any layer runs."""
    tok = lm.tokenizer
    encoded = [tok(ex.context, add_special_tokens=False)["input_ids"] for ex in examples]
    check_prompts_fit(lm, [ex.id for ex in examples], [len(e) for e in encoded], max_new_tokens)
    results: list[GenResult] = []
    for lo in range(0, len(examples), batch_size):
        chunk = list(examples[lo : lo + batch_size])
        enc = encoded[lo : lo + batch_size]
        width = max(len(e) for e in enc)
        ids = torch.full((len(chunk), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):  # left padding: every prompt ends at the same column
            ids[i, width - len(e) :] = torch.tensor(e)
            mask[i, width - len(e) :] = 1
        stops = sorted({s for ex in chunk for s in ex.stop})
        out = lm.generate(ids, program, max_new_tokens=max_new_tokens, attention_mask=mask,
                          eos_token_id=stop_token_ids(tok, stops))
        for i, ex in enumerate(chunk):
            text = truncate_at_stop(tok.decode(out[i, width:], skip_special_tokens=True), ex.stop)
            pred = extract_number(text)
            results.append(GenResult(ex.id, text, pred, pred is not None and pred == ex.answer))
    return results
