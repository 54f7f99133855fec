"""Evaluate a trained run: the full model vs the learned policy on one split.

    # re-evaluate a finished run on its test split (writes RUN_DIR/eval_test.json)
    polar-rl evaluate runs/arc_easy__smollm2-135m__lam0.1__s0__20250101-120000
    # on the validation split, first 200 examples, with the final instead of the best model
    polar-rl evaluate RUN_DIR --split val --limit 200 --checkpoint final

Both methods go through the same engine, scorer and compute accounting (``rollout``,
``method_summary``, ``flops_fraction``), so their numbers are comparable. The full model's result
per example is cached on disk (:mod:`polar_rl.search.results`). ``train`` calls
:func:`evaluate_methods` for its final evaluation.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polar_rl.agents.algorithms import actor_network, load_algorithm
from polar_rl.agents.baselines import load_or_search
from polar_rl.agents.run_dir import RunLock, check_writable
from polar_rl.compute import flops_fraction
from polar_rl.config import Config, ConfigError, EnvConfig
from polar_rl.config_sources import load_config
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import Known, program_actions, rollout, rollout_programs, sb3_policy
from polar_rl.fileio import slug
from polar_rl.metrics import mcnemar_exact, method_summary, paired_bootstrap
from polar_rl.models.adapter import LayerModel
from polar_rl.program import action_to_runs, runs_string
from polar_rl.search.families import StaticBaselines
from polar_rl.search.results import ProgramResultStore, program_store, reference_store
from polar_rl.tasks.examples import Task
from polar_rl.tasks.multiple_choice import pack_questions
from polar_rl.tasks.rewards import Reference

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
        return load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype, check=cfg.model.check)
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
    store = reference_store(lm, task, cfg.model.dtype)
    reference = store.load()
    engine = make_engine(lm, task, cfg, n_envs=min(cfg.env.n_envs, len(task)), shuffle=False, reference=reference)
    tau, compute = calibrate_skip_threshold(engine, model, target)
    store.save(reference)
    print(f"skip threshold {tau:.4g}: compute fraction {compute:.3f} on {task.split} (target {target})")
    return tau


def matched_ks(policy_calls: float, num_layers: int, block_size: int, max_k: int, neighbours: int) -> list[int]:
    """Skipped-block counts k whose static programs match the policy's mean layer calls: the nearest k
    (at least 1, at most ``max_k``) and ``neighbours`` on each side."""
    nearest = round((num_layers - policy_calls) / block_size)
    nearest = min(max(1, nearest), max_k)
    return [k for k in range(nearest - neighbours, nearest + neighbours + 1) if 1 <= k <= max_k]


def majority_program(runs: list[list[int]]) -> list[int]:
    """Per block, the run count the policy chose most often (ties: the cheaper one)."""
    table = np.asarray(runs, dtype=int)  # (n, B)
    out = []
    for column in table.T:
        values, counts = np.unique(column, return_counts=True)
        out.append(int(values[np.argmax(counts)]))  # np.unique sorts: the first max is the cheapest
    return out


def static_programs(baselines: StaticBaselines, cfg: Config, calls: float, curves: bool) -> tuple[list[int], dict[str, list[int]]]:
    """The static baselines to compare with a method using ``calls`` layer calls on average: the k
    compared (:func:`matched_ks`; ``curves``: every k) and the programs by name (``greedy_3``,
    ``random_3_s0``): every family of ``cfg.baselines.families`` at each k, random programs (one per
    seed) only at the nearest k unless ``curves``."""
    L, block = baselines.num_layers, cfg.env.block_size
    ks = matched_ks(calls, L, block, baselines.max_k, cfg.baselines.neighbours)
    nearest = matched_ks(calls, L, block, baselines.max_k, 0)
    if curves:
        ks = nearest = list(range(1, baselines.max_k + 1))
    programs: dict[str, list[int]] = {}
    for family in cfg.baselines.families:
        if family == "random":
            for seed in range(cfg.baselines.random_seeds):
                for k in nearest:
                    programs[f"random_{k}_s{seed}"] = baselines.runs("random", k, seed)
        else:
            for k in ks:
                programs[f"{family}_{k}"] = baselines.runs(family, k)
    return ks, programs


def adaptivity(runs: list[list[int]]) -> dict[str, Any]:
    """How much the policy's programs differ between examples: distinct programs and the mean Hamming
    distance between the programs of two different examples (exact, from per-block frequencies)."""
    table = np.asarray(runs, dtype=int)  # (n, B)
    n = table.shape[0]
    hamming = 0.0
    if n > 1:
        for column in table.T:
            _, counts = np.unique(column, return_counts=True)
            same_pairs = float((counts * (counts - 1)).sum())
            hamming += 1.0 - same_pairs / (n * (n - 1))
    programs, counts = np.unique(table, axis=0, return_counts=True)
    top = [{"program": runs_string(p), "share": float(c / n)} for p, c in
           sorted(zip(programs.tolist(), counts.tolist(), strict=True), key=lambda pc: -pc[1])[:5]]
    return {"distinct_programs": int(len(programs)), "mean_hamming": hamming, "most_common": top}


def static_env(env: EnvConfig) -> EnvConfig:
    """The env settings static programs run under: no masks (they skip any block, as searched)."""
    return env.replace(max_compute_fraction=None, always_execute=[], max_loops=None)


def evaluate_methods(
    lm: LayerModel,
    cfg: Config,
    model: Any,
    task: Task,
    reference: dict[str, Reference],
    show_progress: bool = True,
    skip_threshold: float | None = None,
    baselines: StaticBaselines | None = None,
    full_seconds: float | None = None,
    curves: bool = False,
    program_cache: ProgramResultStore | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate on ``task``, in one run: ``full`` (from ``reference`` when it covers the split),
    ``policy`` (``model``; greedy, or SKIP when its SKIP probability >= ``skip_threshold``),
    ``policy_static`` (the adaptivity ablation: per block the policy's most frequent choice), and each
    static baseline family of ``baselines`` at the policy's matched compute (``curves``: every k).

    Returns the ``eval.json`` body and per-example records (``method`` + terminal info fields).
    ``reference`` is read and filled by the engines (load it from, and save it to, the disk cache);
    ``program_cache`` serves and keeps the static programs' records.
    """
    n_envs = min(cfg.env.n_envs, len(task))
    engine = make_engine(lm, task, cfg, n_envs=n_envs, shuffle=False, reference=reference)
    free = make_engine(lm, task, cfg, env=static_env(cfg.env), n_envs=n_envs, shuffle=False, reference=reference)
    free.cache = engine.cache  # one prefix cache: keys are (example, run counts), whatever the masks
    B, L = engine.num_blocks, lm.num_layers

    seq_lens, head_positions = [], []
    for ex in task.examples:
        batch = pack_questions(lm.tokenizer, [ex], lm.pad_token_id)  # type: ignore[list-item]
        seq_lens.append(int(batch.lengths[0]))
        head_positions.append(len(batch.target))
    policy_net = actor_network(model)

    all_records: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float | None] = {}
    # Pass 1, chunk by chunk: the policy, then the static programs the budget predicts (its nearest k).
    # On examples the reference lacks, each chunk's reset runs the full program first and caches its
    # prefixes, so the full model costs nothing extra, the policy's executed prefix is a cache hit and
    # a static program runs only the blocks after its first skip (or nothing, where the policy chose it).
    # Pass 2: the static programs the policy's compute asks for beyond those (its own static average,
    # other k), reusing every record pass 1 made.
    uncached = sum(ex.id not in reference for ex in task.examples)
    engine.reference_seconds = 0.0
    policy_fn = sb3_policy(model, deterministic=True, skip_threshold=skip_threshold)
    budget = cfg.env.max_compute_fraction
    predicted: dict[str, list[int]] = {}
    if baselines is not None and budget is not None and skip_threshold is None and not curves:
        _, predicted = static_programs(baselines, cfg, budget * L, curves)
    full_known: Known = {(ex.id, (1,) * B): _reference_record(ex.id, reference[ex.id], L, B)
                         for ex in task.examples if ex.id in reference}
    from tqdm.auto import tqdm

    with tqdm(total=len(task), desc=f"policy + {len(predicted)} static programs ({task.split})", unit="ex",
              disable=not show_progress, leave=False) as bar:
        first, first_seconds = cached_rollout_programs(free, predicted, program_cache, bar.update, known=full_known,
                                                       policies={"policy": (engine, policy_fn)})
    all_records["full"] = [_reference_record(ex.id, reference[ex.id], L, B) for ex in task.examples]
    seconds["full"] = engine.reference_seconds / uncached if uncached == len(task) else full_seconds
    all_records["policy"] = first.pop("policy")
    seconds["policy"] = first_seconds.pop("policy") - engine.reference_seconds / len(task)

    policy_actions = [list(program_actions(rec["runs"])) for rec in all_records["policy"]]
    policy_calls = float(np.mean([r["layer_calls"] for r in all_records["policy"]]))
    ks, matched = ([], {}) if baselines is None else static_programs(baselines, cfg, policy_calls, curves)
    programs = {"policy_static": majority_program(policy_actions), **matched}
    done = {tuple(runs): name for name, runs in predicted.items()}
    rest = {name: runs for name, runs in programs.items() if tuple(runs) not in done}
    known = dict(full_known)
    for recs in [all_records["policy"], *first.values()]:
        known.update({(r["example_id"], program_actions(r["runs"])): r for r in recs})
    with tqdm(total=len(task), desc=f"{len(rest)} more static programs ({task.split})", unit="ex",
              disable=not show_progress or not rest, leave=False) as bar:
        second, second_seconds = cached_rollout_programs(free, rest, program_cache, bar.update,
                                                         known=known) if rest else ({}, {})
    for name, runs in programs.items():
        source = done.get(tuple(runs))
        all_records[name] = first[source] if source is not None else second[name]
        seconds[name] = first_seconds.get(source) if source is not None else second_seconds.get(name)

    full_correct = [r["correct"] for r in all_records["full"]]
    policy_correct = [r["correct"] for r in all_records["policy"]]
    summaries: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for name, recs in all_records.items():
        calls = [r["layer_calls"] for r in recs]
        if name == "policy":
            flops = flops_fraction(lm, seq_lens, calls, head_positions, decisions=B, policy=policy_net,
                                   logit_lens=cfg.env.obs_logit_lens)
        else:
            flops = flops_fraction(lm, seq_lens, calls, head_positions)
        correct = [r["correct"] for r in recs]
        summary = method_summary(correct, calls, L, full_correct, flops_fraction=flops,
                                 seconds_per_example=seconds.get(name))
        if name != "policy":
            summary["vs_policy"] = paired_comparison(policy_correct, correct)
        if name in programs or name == "full":
            actions = programs.get(name, [1] * B)
            summary["program"] = runs_string([action_to_runs(a, cfg.env.loop_runs) for a in actions])
        summaries[name] = summary
        records.extend({"method": name, **{k: r[k] for k in RECORD_KEYS}} for r in recs)
    if baselines is not None and "random" in cfg.baselines.families and cfg.baselines.random_seeds > 0:
        for k in sorted({int(n.split("_")[1]) for n in summaries if n.startswith("random_")}):
            accs = [summaries[n]["accuracy"] for n in summaries if n.startswith(f"random_{k}_s")]
            summaries[f"random_{k}"] = {"accuracy": float(np.mean(accs)), "accuracy_min": float(np.min(accs)),
                                        "accuracy_max": float(np.max(accs)), "seeds": len(accs),
                                        "compute_fraction": 1 - k * cfg.env.block_size / L, "aggregate": True}

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
        "matched_k": ks,
        "adaptivity": adaptivity([rec["runs"] for rec in all_records["policy"]]),
        "baseline_search": None if baselines is None else {
            "split": baselines.split, "n": baselines.n_examples, "max_k": baselines.max_k,
            "greedy_order": baselines.greedy_order, "settings": baselines.settings, "objective": baselines.objective,
        },
        "methods": summaries,
    }
    return result, records


def cached_rollout_programs(engine: LockstepEngine, programs: dict[str, list[int]],
                            store: ProgramResultStore | None, progress: Callable[[int], None] | None = None,
                            known: Known | None = None,
                            policies: dict[str, tuple[LockstepEngine, Callable]] | None = None,
                            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """:func:`rollout_programs` over the engine's examples (``known`` and ``policies`` as there),
    serving the programs ``store`` holds for every example from disk and saving the others' records
    there. The policies always run."""
    if store is None:
        return rollout_programs(engine, programs, progress=progress, known=known, policies=policies)
    ids = [ex.id for ex in engine.task.examples]
    block, loops = engine.cfg.block_size, engine.cfg.loop_runs
    records: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    missing: dict[str, list[int]] = {}
    for name, runs in programs.items():
        hit = store.load(runs, block, loops, ids)
        if hit is None:
            missing[name] = runs
        else:
            records[name], secs = hit
            if secs is not None:
                seconds[name] = secs
    if missing or policies:
        new_records, new_seconds = rollout_programs(engine, missing, progress=progress, known=known,
                                                    policies=policies)
        records.update(new_records)
        seconds.update(new_seconds)
        if missing:
            store.save({tuple(runs): (new_records[name], new_seconds[name]) for name, runs in missing.items()},
                       block, loops)
    elif progress is not None:
        progress(len(ids))
    return records, seconds


def paired_comparison(reference_correct: Sequence[bool], method_correct: Sequence[bool]) -> dict[str, Any]:
    """Accuracy difference (method - reference), its bootstrap CI and the exact McNemar test."""
    ref = np.asarray(reference_correct, dtype=bool)
    got = np.asarray(method_correct, dtype=bool)
    return {"delta": float(got.mean() - ref.mean()) if ref.size else 0.0,
            "delta_ci": list(paired_bootstrap(ref, got)), "mcnemar": mcnemar_exact(ref, got)}


def _reference_record(example_id: str, ref: Reference, num_layers: int, num_blocks: int) -> dict[str, Any]:
    return {"example_id": example_id, "correct": ref.correct, "margin": ref.margin, "layer_calls": num_layers,
            "compute_fraction": 1.0, "program": "x" * num_blocks, "runs": [1] * num_blocks,
            "full_correct": ref.correct, "full_margin": ref.margin, "nonfinite": False}


def print_summary(result: dict[str, Any]) -> None:
    """One screen: every method's accuracy with its 95 % CI, compute, FLOPs, paired tests vs full and policy."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from polar_rl.agents.report import ordered_methods

    table = Table(title=f"{result['task']} / {result['split']} (n={result['n']}), "
                        f"{result['model']}, lambda={result['compute_penalty']:g}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("method", "accuracy [95% CI]", "Δ full", "p full", "Δ policy", "p policy", "calls", "compute", "FLOPs"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for name, m in ordered_methods(result["methods"]):
        if m.get("aggregate"):
            table.add_row(f"{name} (mean of {m['seeds']})", f"{m['accuracy']:.3f} [{m['accuracy_min']:.3f}, "
                          f"{m['accuracy_max']:.3f}] range", "", "", "", "", "", f"{m['compute_fraction']:.3f}", "")
            continue
        lo, hi = m["accuracy_ci"]
        flops = m.get("flops_fraction")
        vs = m.get("vs_policy")
        table.add_row(
            name,
            f"{m['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
            f"{m['delta_vs_full']:+.3f}",
            "-" if name == "full" else f"{m['mcnemar']['p_value']:.3g}",
            "-" if vs is None else f"{vs['delta']:+.3f}",
            "-" if vs is None else f"{vs['mcnemar']['p_value']:.3g}",
            f"{m['layer_calls']:.1f}",
            f"{m['compute_fraction']:.3f}",
            "-" if flops is None else f"{flops:.3f}",
        )
    import sys

    Console(width=None if sys.stdout.isatty() else 200).print(table)
    ad = result.get("adaptivity")
    if ad:
        print(f"policy adaptivity: {ad['distinct_programs']} distinct programs, mean Hamming distance "
              f"{ad['mean_hamming']:.2f} blocks between two questions' programs")


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


def evaluate_and_report(lm: LayerModel, cfg: Config, model: Any, task: Task, run_dir: Path, *,
                        show_progress: bool = True, skip_threshold: float | None = None, curves: bool = False,
                        records_file: str, result_file: str, command: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Baselines (cached search), every method on ``task``, then records, report.md, plots and the result
    file, written as one set (:func:`polar_rl.agents.report.write_evaluation`)."""
    from polar_rl.agents.report import eval_files, write_evaluation

    baselines = None
    if cfg.baselines.families:
        try:
            baselines = load_or_search(lm, cfg, show_progress=show_progress)
        except ValueError as e:
            raise ConfigError(f"baselines: {e}") from None
    store = reference_store(lm, task, cfg.model.dtype)
    reference = store.load()
    result, records = evaluate_methods(lm, cfg, model, task, reference, show_progress, skip_threshold=skip_threshold,
                                       baselines=baselines, full_seconds=store.load_seconds(), curves=curves,
                                       program_cache=program_store(lm, task, cfg.model.dtype))
    store.save(reference)  # optional caches: a write failure is a warning, never the run
    if result["methods"]["full"].get("seconds_per_example") is not None:
        store.save_seconds(result["methods"]["full"]["seconds_per_example"])
    result.update(extra)
    result["command"] = command
    write_evaluation(eval_files(run_dir, result_file, records_file), result, records)
    return result


def warn_incomplete(run_dir: Path, stem: str) -> None:
    """Say so when the evaluation this one replaces left an incomplete set (a kill or a full disk
    before this project wrote sets as one)."""
    from polar_rl.agents.report import check_evaluation, eval_files

    problem = check_evaluation(eval_files(run_dir, f"{stem}.json"))
    if problem is not None:
        print(f"warning: {problem}; this evaluation replaces it")


def main(run_dir: str | Path, split: str = "test", limit: int | None = None, checkpoint: str = "auto",
         show_progress: bool = True, target_compute: float | None = None, curves: bool = False,
         task_name: str | None = None) -> dict[str, Any]:
    """Re-evaluate the run in ``run_dir`` on ``split`` (of its own task, or of ``task_name``: transfer,
    with the static programs still searched on the run's task); writes ``eval[_<task>]_<split>.json``."""
    import shlex
    import sys

    from polar_rl.agents.report import recover_evaluations

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    check_writable(run_dir, "run folder")  # results go there: fail before the work, not after
    # a run still training (or another evaluate) writes this folder: refuse at once, never interleave
    lock = RunLock(run_dir, action="evaluating it").acquire()
    try:
        recover_evaluations(run_dir)  # a killed evaluation's leftovers: its predecessor comes back
        cfg = load_config(run_dir / "config.yaml")
        if limit is None:
            limit = {cfg.task.test_split: cfg.task.test_limit, cfg.task.eval_split: cfg.task.eval_limit}.get(split)
        path = resolve_checkpoint(run_dir, checkpoint)
        transfer = task_name is not None and task_name != cfg.task.name
        eval_cfg = cfg.replace(task=cfg.task.replace(name=task_name)) if transfer else cfg
        task = load_split(eval_cfg, split, limit)  # type: ignore[arg-type]
        stem = f"eval_{slug(task.name)}_{split}" if transfer else f"eval_{split}"
        warn_incomplete(run_dir, stem)
        lm = load_lm(cfg)
        model = load_algorithm(cfg, path, lm)  # a damaged or foreign zip: one error; never unpickled
        tau = threshold_for_target(lm, cfg, model, cfg.training.target_compute if target_compute is None else target_compute)
        result = evaluate_and_report(
            lm, cfg, model, task, run_dir, show_progress=show_progress, skip_threshold=tau, curves=curves,
            records_file=f"{stem}_records.jsonl", result_file=f"{stem}.json",
            command=shlex.join(["polar-rl", "evaluate", *sys.argv[2:]]) if sys.argv[1:2] == ["evaluate"]
            else f"polar-rl evaluate {run_dir} --split {split}",
            extra={"policy_checkpoint": path.name, "trained_on": cfg.task.name},
        )
    finally:
        lock.release()
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
    parser.add_argument("--task", default=None, dest="task_name",
                        help="evaluate on another task (transfer; default: the run's task); the static "
                             "baselines stay those searched on the run's task")
    parser.add_argument("--curves", action="store_true",
                        help="evaluate every static baseline at every k (the full curves; slow), not only at "
                             "the policy's matched compute")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_cli(argv: list[str], prog: str = "polar-rl evaluate") -> int:
    args = make_parser(prog).parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.target_compute is not None and not 0 < args.target_compute:
        raise ConfigError(f"--target-compute must be > 0, got {args.target_compute}")
    main(args.run_dir, args.split, args.limit, args.checkpoint, show_progress=not args.no_progress,
         target_compute=args.target_compute, curves=args.curves, task_name=args.task_name)
    return 0


if __name__ == "__main__":
    import sys

    from polar_rl.agents.cli import invocation
    from polar_rl.agents.cli import main as cli_main

    sys.exit(cli_main(["evaluate", *sys.argv[1:]], command_line=invocation()))
