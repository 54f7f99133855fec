"""Core benchmarks: packed vs naive multiple-choice scoring, adapter overhead vs the stock forward.

    .venv/bin/python bench/bench_core.py
"""

from __future__ import annotations

import platform

import torch

import polar_rl
from bench.common import median_seconds, merge_results
from polar_rl.tasks.multiple_choice import pack_questions, score_naive, score_packed


def main() -> None:
    torch.manual_seed(0)
    lm = polar_rl.load_model()
    questions = list(polar_rl.load_task("arc_easy", "test").examples[:64])

    # ---- packed vs naive: 64 ARC-Easy questions, 16 per call -----------------------------
    def packed() -> None:
        for lo in range(0, 64, 16):
            score_packed(lm, questions[lo : lo + 16])

    def naive() -> None:
        for lo in range(0, 64, 16):
            score_naive(lm, questions[lo : lo + 16])

    packed_tokens = sum(pack_questions(lm.tokenizer, questions[lo : lo + 16]).num_tokens for lo in range(0, 64, 16))
    naive_tokens = sum(score_naive(lm, questions[lo : lo + 16])[1] for lo in range(0, 64, 16))
    t_packed = median_seconds(packed, repeats=3)
    t_naive = median_seconds(naive, repeats=3)

    # ---- adapter overhead: identity program vs the stock forward ---------------------------
    enc = lm.tokenizer([q.context + q.choices[0] for q in questions[:16]], return_tensors="pt", padding=True)

    def stock() -> None:
        with torch.inference_mode():
            lm.model(**enc)

    def adapter() -> None:
        lm.logits(enc["input_ids"], enc["attention_mask"])

    # interleave to share any drift in machine load
    t_stock, t_adapter = [], []
    for _ in range(5):
        t_stock.append(median_seconds(stock, repeats=3))
        t_adapter.append(median_seconds(adapter, repeats=3))
    overhead = sorted(t_adapter)[2] / sorted(t_stock)[2] - 1

    merge_results(
        {
            "packed_token_ratio": round(packed_tokens / naive_tokens, 4),
            "packed_time_ratio": round(t_packed / t_naive, 4),
            "packed_seconds_per_16_questions": round(t_packed / 4, 4),
            "adapter_overhead": round(overhead, 4),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        }
    )


if __name__ == "__main__":
    main()
