"""Static-baseline search: layer calls of the greedy search with shared prefixes vs without.

    .venv/bin/python -m bench.bench_baselines

Same programs, same questions (32 ARC-Easy train questions, SmolLM2-135M, greedy down to 0.6
compute, the default lazy greedy: the 4 cheapest candidates re-scored): with prefix sharing a candidate that skips block b starts from
the kept state before b; without, every candidate program runs from the embedding. Also the wall
time of the search with sharing.
"""

from __future__ import annotations

import polar_rl
from bench.common import merge_results
from polar_rl.search.families import search_static_programs


def main() -> None:
    lm = polar_rl.load_model()
    task = polar_rl.load_task("arc_easy", "train", limit=32)
    found = search_static_programs(lm, task.examples, task=task.name, split="train", min_compute=0.6,
                                   greedy_candidates=4)
    merge_results({
        "baseline_search_layer_calls_ratio": round(found.search_layer_calls / found.search_layer_calls_no_cache, 4),
        "baseline_search_seconds_32_questions": round(found.seconds, 1),
    })


if __name__ == "__main__":
    main()
