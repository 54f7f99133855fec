"""Generative scoring (gsm8k): greedy answer under a program, final number extracted, exact match."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polar_rl.program import Program
from polar_rl.tasks.examples import GenExample
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


@torch.inference_mode()
def generate_answers(
    lm: Any,
    examples: Sequence[GenExample],
    program: Program | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 4,
) -> list[GenResult]:
    """Greedy answers under ``program`` (None = full model), left-padded batches, cached decoding."""
    tok = lm.tokenizer
    results: list[GenResult] = []
    for lo in range(0, len(examples), batch_size):
        chunk = list(examples[lo : lo + batch_size])
        enc = [tok(ex.context, add_special_tokens=False)["input_ids"] for ex in chunk]
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
