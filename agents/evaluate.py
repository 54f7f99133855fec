"""Evaluate a trained run: the full model vs the learned policy on one split.

    # re-evaluate a finished run on its test split (writes RUN_DIR/eval_test.json)
    polar-rl evaluate runs/arc_easy__smollm2-135m__lam0.1__s0__20250101-120000
    # on the validation split, first 200 examples, with the final instead of the best model
    polar-rl evaluate RUN_DIR --split val --limit 200 --checkpoint final

Both methods go through the same engine, scorer and compute accounting (``rollout``,
``method_summary``, ``flops_fraction``), so their numbers are comparable. The full model's result
per example is cached on disk (:mod:`polar_rl.agents.reference_store`). ``train`` calls
:func:`evaluate_methods` for its final evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polar_rl.agents.algorithms import actor_network, load_algorithm
from polar_rl.agents.reference_store import ReferenceStore
from polar_rl.agents.run_dir import write_json_atomic, write_jsonl_atomic
from polar_rl.compute import flops_fraction
from polar_rl.config import Config, ConfigError, load_config
from polar_rl.envs.engine import LockstepEngine, Reference
from polar_rl.envs.rollout import constant_policy, rollout, sb3_policy
from polar_rl.metrics import method_summary
from polar_rl.models.adapter import LayerModel
from polar_rl.tasks.examples import Task
from polar_rl.tasks.multiple_choice import pack_questions

RECORD_KEYS = ("example_id", "correct", "margin", "layer_calls", "compute_fraction", "program", "runs",
               "full_correct", "full_margin", "nonfinite")


# ---- loading, with setup errors as ConfigError ---------------------------------------------------


def load_lm(cfg: Config) -> LayerModel:
    import torch

    from polar_rl import load_model

    device = cfg.model.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={device!r}: CUDA is not available here (use cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device='mps': MPS is not available here (use cpu)")
    try:
        return load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    except ValueError as e:
        raise ConfigError(f"model.name={cfg.model.name!r}: {e}") from None


def load_split(cfg: Config, split: str, limit: int | None = None) -> Task:
    from polar_rl import load_task

    try:
        return load_task(cfg.task.name, split, limit=limit)
    except ValueError as e:
        raise ConfigError(f"task.name={cfg.task.name!r} split {split!r}: {e}") from None


def make_engine(lm: LayerModel, task: Task, cfg: Config, **kwargs: Any) -> LockstepEngine:
    """A LockstepEngine; its configuration errors (block size, task kind, ...) become ConfigError."""
    env = kwargs.pop("env", cfg.env)
    try:
        return LockstepEngine(lm, task, env, **kwargs)
    except ValueError as e:
        raise ConfigError(f"env: {e}") from None


# ---- full vs policy ------------------------------------------------------------------------------


def calibrate_skip_threshold(
    engine: LockstepEngine, model: Any, target: float, iters: int = 8
) -> tuple[float, float]:
    """The largest SKIP threshold whose compute fraction on ``engine``'s split is <= ``target``.

    Bisection on log(tau) in [1e-4, 1]; returns (tau, the compute fraction it gave there).
    """
    import math

    def compute_at(tau: float) -> float:
        recs, _ = rollout(engine, sb3_policy(model, skip_threshold=tau))
        return sum(r["compute_fraction"] for r in recs) / len(recs)

    lo, hi = math.log(1e-4), 0.0  # compute(lo) is smallest (most skips), compute(hi) largest
    best = (1e-4, compute_at(1e-4))
    for _ in range(iters):
        mid = (lo + hi) / 2
        c = compute_at(math.exp(mid))
        if c <= target:
            best, lo = (math.exp(mid), c), mid
        else:
            hi = mid
    return best


def threshold_for_target(lm: LayerModel, cfg: Config, model: Any, target: float | None) -> float | None:
    """Calibrate the SKIP threshold on the eval split (never the test split) for ``target`` compute."""
    if target is None:
        return None
    task = load_split(cfg, cfg.task.eval_split, cfg.task.eval_limit)
    store = ReferenceStore(lm.model_hash, task.name, task.split, cfg.model.dtype)
    reference = store.load()
    engine = make_engine(lm, task, cfg, n_envs=min(cfg.env.n_envs, len(task)), shuffle=False, reference=reference)
    tau, compute = calibrate_skip_threshold(engine, model, target)
    store.save(reference)
    print(f"skip threshold {tau:.4g}: compute fraction {compute:.3f} on {task.split} (target {target})")
    return tau


def evaluate_methods(
    lm: LayerModel,
    cfg: Config,
    model: Any,
    task: Task,
    reference: dict[str, Reference],
    show_progress: bool = True,
    skip_threshold: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``full`` (every block once) and ``policy`` (``model``) over ``task``. The policy decodes
    greedily (argmax), or with ``skip_threshold`` SKIPs when its SKIP probability >= the threshold.

    Returns the ``eval.json`` body and per-example records (``method`` + terminal info fields).
    ``reference`` is read and filled by the engines (load it from, and save it to, the disk cache).
    """
    n_envs = min(cfg.env.n_envs, len(task))
    engine = make_engine(lm, task, cfg, n_envs=n_envs, shuffle=False, reference=reference)
    full_engine = engine
    if cfg.env.max_compute_fraction is not None and cfg.env.max_compute_fraction < 1.0:
        # the budget would mask EXECUTE; the full model is evaluated without it
        free_env = dataclasses.replace(cfg.env, max_compute_fraction=None)
        full_engine = make_engine(lm, task, cfg, env=free_env, n_envs=n_envs, shuffle=False, reference=reference)
    methods: dict[str, tuple[LockstepEngine, Callable]] = {
        "full": (full_engine, constant_policy([1] * engine.num_blocks)),
        "policy": (engine, sb3_policy(model, deterministic=True, skip_threshold=skip_threshold)),
    }

    seq_lens, head_positions = [], []
    for ex in task.examples:
        batch = pack_questions(lm.tokenizer, [ex], lm.pad_token_id)  # type: ignore[list-item]
        seq_lens.append(int(batch.lengths[0]))
        head_positions.append(len(batch.target))

    summaries: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for name, (eng, policy) in methods.items():
        recs, seconds = _run(eng, policy, f"eval {name} ({task.split})", len(task), show_progress)
        calls = [r["layer_calls"] for r in recs]
        if name == "full":
            flops = flops_fraction(lm, seq_lens, calls, head_positions)
        else:
            flops = flops_fraction(lm, seq_lens, calls, head_positions, decisions=engine.num_blocks,
                                   policy=actor_network(model), logit_lens=cfg.env.obs_logit_lens)
        summaries[name] = method_summary(
            [r["correct"] for r in recs], calls, lm.num_layers, [r["full_correct"] for r in recs],
            flops_fraction=flops, seconds_per_example=seconds,
        )
        records.extend({"method": name, **{k: r[k] for k in RECORD_KEYS}} for r in recs)

    result = {
        "task": task.name,
        "split": task.split,
        "n": len(task),
        "model": lm.name,
        "model_hash": lm.model_hash,
        "seed": cfg.seed,
        "compute_penalty": cfg.env.compute_penalty,
        "num_timesteps": int(getattr(model, "num_timesteps", 0)),
        "policy_decoding": "greedy" if skip_threshold is None else f"skip_threshold {skip_threshold:.6g}",
        "skip_threshold": skip_threshold,
        "methods": summaries,
    }
    return result, records


def _run(engine: LockstepEngine, policy: Callable, desc: str, total: int, show: bool) -> tuple[list, float]:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="ex", disable=not show, leave=False) as bar:
        return rollout(engine, policy, progress=bar.update)


def print_summary(result: dict[str, Any]) -> None:
    """One screen: full vs policy, accuracy with its 95 % CI, compute, FLOPs, McNemar p."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['task']} / {result['split']} (n={result['n']}), "
                        f"{result['model']}, lambda={result['compute_penalty']:g}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("method", "accuracy [95% CI]", "Δ full", "calls", "compute", "FLOPs", "McNemar p"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for name, m in result["methods"].items():
        lo, hi = m["accuracy_ci"]
        flops = m.get("flops_fraction")
        p = m["mcnemar"]["p_value"] if name != "full" else None
        table.add_row(
            name,
            f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
            f"{m['delta_vs_full']:+.3f}",
            f"{m['layer_calls']:.1f}",
            f"{m['compute_fraction']:.3f}",
            "-" if flops is None else f"{flops:.3f}",
            "-" if p is None else f"{p:.3g}",
        )
    Console().print(table)


# ---- entry point -------------------------------------------------------------------------------


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """``best`` / ``final`` / ``auto`` (best if present, else final) / a path to a zip."""
    best, final = run_dir / "best_model.zip", run_dir / "model.zip"
    if which == "auto":
        path = best if best.is_file() else final
    elif which == "best":
        path = best
    elif which == "final":
        path = final
    else:
        path = Path(which)
    if not path.is_file():
        raise ConfigError(f"no model to evaluate: {path} does not exist (checkpoint={which!r})")
    return path


def main(run_dir: str | Path, split: str = "test", limit: int | None = None, checkpoint: str = "auto",
         show_progress: bool = True, target_compute: float | None = None) -> dict[str, Any]:
    """Re-evaluate the run in ``run_dir`` on ``split``; writes ``eval_<split>.json``; returns it."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if limit is None:
        limit = {cfg.task.test_split: cfg.task.test_limit, cfg.task.eval_split: cfg.task.eval_limit}.get(split)
    path = resolve_checkpoint(run_dir, checkpoint)
    task = load_split(cfg, split, limit)
    lm = load_lm(cfg)
    model = load_algorithm(cfg.agent.algo, path)
    tau = threshold_for_target(lm, cfg, model, cfg.training.target_compute if target_compute is None else target_compute)
    store = ReferenceStore(lm.model_hash, task.name, split, cfg.model.dtype)
    reference = store.load()
    result, records = evaluate_methods(lm, cfg, model, task, reference, show_progress, skip_threshold=tau)
    store.save(reference)
    result["policy_checkpoint"] = path.name
    write_jsonl_atomic(run_dir / f"eval_{split}_records.jsonl", records)
    write_json_atomic(run_dir / f"eval_{split}.json", result)
    print_summary(result)
    return result


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("run_dir", type=Path, help="the run folder (holds config.yaml and model zips)")
    parser.add_argument("--split", default="test", help="split to evaluate on (default: test)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N examples (default: the run's task.test_limit / eval_limit for those splits)")
    parser.add_argument("--checkpoint", default="auto",
                        help="best, final, auto (best if present, else final) or a path to a model zip")
    parser.add_argument("--target-compute", type=float, default=None,
                        help="also evaluate the policy with a SKIP threshold calibrated on the eval split "
                             "for this compute fraction (default: the run's training.target_compute)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_cli(argv: list[str], prog: str = "polar-rl evaluate") -> int:
    args = make_parser(prog).parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.target_compute is not None and not 0 < args.target_compute:
        raise ConfigError(f"--target-compute must be > 0, got {args.target_compute}")
    main(args.run_dir, args.split, args.limit, args.checkpoint, show_progress=not args.no_progress,
         target_compute=args.target_compute)
    return 0


if __name__ == "__main__":
    import sys

    from polar_rl.agents.cli import invocation
    from polar_rl.agents.cli import main as cli_main

    sys.exit(cli_main(["evaluate", *sys.argv[1:]], command_line=invocation()))
