"""Serving benchmark: SmolLM2-135M, 32 ARC-Easy prompts x 64 new tokens, one left-padded batch.

    .venv/bin/python -m bench.bench_serving                    # a fresh export (see below)
    .venv/bin/python -m bench.bench_serving --export runs/<run>/export

- ``policy_overhead_share``: wall time in the policy (features + ONNX call + masks, once per block)
  over the runner's whole ``generate`` wall time (goal <= 0.01);
- ``serving_excess_over_fraction``: the runner's ``generate`` wall time (deciding the programs on the
  prompts, then cached decoding under them) over the full model's cached ``generate``, minus the
  programs' mean compute fraction f (goal <= 0.05: skipped layers must really save time).

Without ``--export`` the policy is an untrained MaskablePPO under the main job's env settings
(``configs/default.yaml``: a 0.9 budget, blocks 0, 1, 28, 29 forced, its initial action
probabilities): its greedy programs execute until the budget forces SKIPs, f = 0.9. Timing depends
on the programs' compute, not on what the policy learned. Each figure is the fastest of 2
interleaved runs (the machine is shared; a run takes minutes on 2 CPU cores);
``serving_excess_over_fraction_cpu_time`` is the same ratio in process CPU time, which other
processes on a shared machine disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import polar_rl
from bench.common import merge_results
from polar_rl.serving import PolarRunner

PROMPTS, NEW_TOKENS, REPEATS = 32, 64, 2


def fresh_export(lm: polar_rl.LayerModel, out: Path) -> Path:
    """Export an untrained MaskablePPO built on the main job's env settings."""
    from sb3_contrib import MaskablePPO

    from polar_rl.agents.algorithms import set_initial_action_probs
    from polar_rl.agents.export import export_policy
    from polar_rl.config_sources import load_config
    from polar_rl.envs.vec_env import LayerProgramVecEnv

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    venv = LayerProgramVecEnv(lm, polar_rl.load_task("arc_easy", "train", limit=8), config=cfg.env, n_envs=2)
    model = MaskablePPO("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs={"net_arch": list(cfg.agent.net_arch)})
    if cfg.agent.init_action_probs is not None:
        set_initial_action_probs(model, cfg.agent.init_action_probs)
    return export_policy(model, lm, cfg.env, out, source={"run_dir": None, "note": "untrained, bench_serving"})


def left_padded(lm: polar_rl.LayerModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), lm.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e):], mask[i, width - len(e):] = torch.tensor(e), 1
    return ids, mask


def main(export: Path | None = None) -> None:
    torch.manual_seed(0)
    lm = polar_rl.load_model()
    with tempfile.TemporaryDirectory() as tmp:
        runner = PolarRunner.load(export or fresh_export(lm, Path(tmp) / "export"), lm)
    questions = polar_rl.load_task("arc_easy", "test").examples[:PROMPTS]
    ids, mask = left_padded(lm, [q.context for q in questions])

    def full() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        lm.generate(ids, None, NEW_TOKENS, attention_mask=mask)
        return time.perf_counter() - t0, time.process_time() - c0

    def serve() -> tuple[float, float, float, list[polar_rl.Program]]:
        runner.policy_seconds = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        out = runner.generate(ids, NEW_TOKENS, attention_mask=mask)
        return time.perf_counter() - t0, time.process_time() - c0, runner.policy_seconds, out.programs

    lm.generate(ids[:4], None, 4, attention_mask=mask[:4])  # warm-up (kernels, allocator)
    runner.generate(ids[:4], 4, attention_mask=mask[:4])
    full_runs, serve_runs = [], []
    for _ in range(REPEATS):  # interleaved, so drift in machine load hits both alike; the fastest of each
        full_runs.append(full())
        serve_runs.append(serve())
    tf, cf = min(r[0] for r in full_runs), min(r[1] for r in full_runs)
    ts, _, t_policy, programs = min(serve_runs, key=lambda r: r[0])
    cs = min(r[1] for r in serve_runs)
    fraction = statistics.mean(p.compute_fraction for p in programs)
    merge_results({
        "policy_overhead_share": round(t_policy / ts, 4),
        "serving_excess_over_fraction": round(ts / tf - fraction, 4),
        "serving_excess_over_fraction_cpu_time": round(cs / cf - fraction, 4),  # process CPU time: robust to other load
        "serving_compute_fraction": round(fraction, 4),
        "serving_distinct_programs": len({p.runs for p in programs}),
        "serving_seconds_full_32x64": round(tf, 3),
        "serving_seconds_policy_32x64": round(ts, 3),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=None, help="an export folder (default: a fresh export)")
    main(parser.parse_args().export)
