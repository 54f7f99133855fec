"""Shared helpers for benchmarks: timing (median of repeats) and merging into bench/results.json."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polar_rl.fileio import write_text_atomic

RESULTS = Path(__file__).with_name("results.json")


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def merge_results(values: dict[str, Any], path: Path = RESULTS) -> None:
    """Merge this benchmark's keys into results.json (atomic write)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    for k, v in values.items():
        print(f"{k}: {v}")
