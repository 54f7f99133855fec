"""Run every benchmark in bench/ and merge their figures into bench/results.json.

    make bench          # or: .venv/bin/python -m bench.run_all
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["bench.bench_core", "bench.bench_env", "bench.bench_baselines", "bench.bench_serving"]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    failed = []
    for mod in BENCHES:
        print(f"== {mod}", flush=True)
        if subprocess.run([sys.executable, "-m", mod], cwd=root).returncode != 0:
            failed.append(mod)
    if failed:
        print(f"benchmarks failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
