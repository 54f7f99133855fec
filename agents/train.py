"""Train a policy that picks SKIP / EXECUTE / LOOP per block of layers, then evaluate it.

    # the whole pipeline in about a minute on a laptop CPU
    polar-rl train --config configs/smoke.yaml
    # the main job, with a different compute penalty and seed
    polar-rl train --config configs/default.yaml --env.compute_penalty 0.05 --seed 3
    # continue a killed run from its latest checkpoint (training.* / tracking.* may be overridden)
    polar-rl train --resume runs/arc_easy__smollm2-135m__lam0.1__s0__20250101-120000
    # every setting with its help text and default
    polar-rl train --help

The run folder (see :mod:`polar_rl.agents.run_dir`) gets the resolved config, command, commit and
seed before training starts, checkpoints and ``metrics.jsonl`` while it runs, and ``eval.json``
(full model vs policy on the test split) last. Everything beyond SB3's ``learn`` is a callback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecMonitor

from polar_rl.agents.algorithms import DamagedModelError, check_algorithm, load_algorithm, make_algorithm
from polar_rl.agents.callbacks import (
    BEST_INFO,
    EVAL_KEYS,
    TRAIN_EXAMPLES,
    CheckpointWithRngCallback,
    EpisodeMetricsCallback,
    ProgramEvalCallback,
    load_rng,
    restore_buffers,
    restore_rng,
    save_model_atomic,
)
from polar_rl.agents.evaluate import (
    evaluate_and_report,
    load_lm,
    load_split,
    make_engine,
    print_summary,
    threshold_for_target,
)
from polar_rl.agents.run_dir import (
    EVAL_FILE,
    JsonlWriter,
    RunLock,
    append_command,
    check_writable,
    checkpoint_paths,
    create_run_dir,
    latest_checkpoint,
    legacy_note,
    list_checkpoints,
    read_metrics,
    run_name,
    truncate_metrics,
    write_provenance,
)
from polar_rl.agents.wandb_output import WandbWriter, finish_run, log_summary, start_run
from polar_rl.config import Config, ConfigError
from polar_rl.config_sources import add_config_arguments, load_config, overrides_from_args, save_config
from polar_rl.envs.vec_env import LayerProgramVecEnv
from polar_rl.fileio import write_json_atomic, write_text_atomic
from polar_rl.search.results import reference_store

RESUMABLE_SECTIONS = ("training.", "tracking.")
#: what loading a damaged checkpoint raises (truncated zip, garbage RNG file, wrong contents)
DAMAGED = (DamagedModelError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
           IndexError)


def main(cfg: Config, resume: str | Path | None = None, argv: Sequence[str] | None = None) -> Path:
    """Train with ``cfg`` (or continue the run folder ``resume``); returns the run folder."""
    argv = list(sys.argv if argv is None else argv)
    check_algorithm(cfg)
    cfg.tracking.effective_mode()  # a bad $WANDB_MODE fails here, not after the run folder exists
    check_writable(cfg.output_dir if resume is None else resume, "output_dir" if resume is None else "--resume")
    if cfg.training.best_metric not in EVAL_KEYS:
        raise ConfigError(
            f"training.best_metric: {cfg.training.best_metric!r} is not logged by evaluation; "
            f"choose one of {', '.join(EVAL_KEYS)}"
        )
    if cfg.seed is None:
        cfg = cfg.with_seed()
        print(f"seed: {cfg.seed} (drawn; pass --seed {cfg.seed} to repeat this run)")
    else:
        print(f"seed: {cfg.seed}")
    seed = int(cfg.seed)  # type: ignore[arg-type]

    # ---- data and environments (every setup error is a ConfigError, before any folder exists)
    train_task = load_split(cfg, cfg.task.train_split)
    eval_task = load_split(cfg, cfg.task.eval_split, cfg.task.eval_limit)
    test_task = load_split(cfg, cfg.task.test_split, cfg.task.test_limit)
    lm = load_lm(cfg)
    stores = {t.split: reference_store(lm, t, cfg.model.dtype) for t in (train_task, eval_task)}
    refs = {split: store.load() for split, store in stores.items()}
    try:
        venv = LayerProgramVecEnv(model=lm, task=train_task, config=cfg.env, n_envs=cfg.env.n_envs,
                                  shuffle=True, seed=seed, reference=refs[train_task.split])
    except ValueError as e:
        raise ConfigError(f"env: {e}") from None
    eval_engine = make_engine(lm, eval_task, cfg, n_envs=min(cfg.env.n_envs, len(eval_task)), shuffle=False,
                              reference=refs[eval_task.split])
    env = VecMonitor(venv)

    # ---- run folder and model: new, or the newest intact checkpoint of the resumed run
    lock = None
    try:
        if resume is None:
            set_random_seed(seed)
            model = make_algorithm(cfg, env, seed)  # bad agent.kwargs fail here, before the folder exists
            info = None
            if cfg.agent.warm_start is not None:  # a bad warm_start program fails before the folder exists too
                from polar_rl.agents.baselines import load_or_search
                from polar_rl.agents.warm_start import warm_start

                clone_engine = make_engine(lm, train_task, cfg, shuffle=True, seed=seed,
                                           reference=refs[train_task.split])
                info = warm_start(model, cfg, load_or_search(lm, cfg, show_progress=cfg.training.progress_bar),
                                  clone_engine, eval_engine)
            run_dir = create_run_dir(cfg.output_dir, run_name(cfg, train_task.name, lm.name))
            lock = RunLock(run_dir).acquire()
            save_config(cfg, run_dir / "config.yaml")
            write_provenance(run_dir, argv, seed)
            if info is not None:
                write_json_atomic(run_dir / "warm_start.json", info)
            best = float("-inf")
        else:
            run_dir = Path(resume)
            lock = RunLock(run_dir, action="resuming it").acquire()  # one writer: a second --resume stops here
            model, steps = load_resumable(run_dir, cfg, env, venv)
            append_command(run_dir, argv)
            save_resumed_config(cfg, run_dir, steps)
            best = max([m[cfg.training.best_metric] for m in read_metrics(run_dir)
                        if m.get(cfg.training.best_metric) is not None] + [best_recorded(run_dir, cfg)],
                       default=float("-inf"))
            dropped = truncate_metrics(run_dir, steps)
            if dropped:
                print(f"metrics.jsonl: dropped {dropped} lines logged after step {steps} (the steps are run again)")
            print(f"resuming {run_dir} from {checkpoint_paths(run_dir, steps)[0].name} ({model.num_timesteps} steps)")
        return _train_and_evaluate(cfg, lm, model, env, venv, eval_engine, test_task, stores, refs, run_dir,
                                   best, resume is None)
    finally:
        if lock is not None:
            lock.release()


def load_resumable(run_dir: Path, cfg: Config, env: Any, venv: LayerProgramVecEnv) -> tuple[Any, int]:
    """The model of the newest checkpoint that loads (zip and RNG states), with the RNG states restored.
    A damaged checkpoint (truncated zip, garbage RNG file) is skipped with a warning naming it, and
    one with only a legacy pickled RNG file counts as one without RNG state (named, never unpickled);
    ConfigError when none is intact."""
    from polar_rl.search.results import examples_digest

    if note := legacy_note(run_dir):
        print(f"warning: {note}")
    problems = []
    digest = examples_digest(venv.engine.task.examples)  # type: ignore[arg-type]
    for steps in reversed(list_checkpoints(run_dir)):
        zip_path, rng_path = checkpoint_paths(run_dir, steps)
        try:
            state = load_rng(rng_path)
            missing = {"python", "numpy", "torch", "engine_sampler"} - set(state if isinstance(state, dict) else ())
            if missing:
                raise ValueError(f"{rng_path.name} lacks {sorted(missing)}")
            if state.get(TRAIN_EXAMPLES, digest) != digest:  # not damage: the data moved under the run
                raise ConfigError(
                    f"cannot resume {run_dir}: the train split of task {cfg.task.name!r} changed since the run "
                    f"started ({len(venv.engine.task)} examples now, digest {digest} vs {state[TRAIN_EXAMPLES]}); "
                    f"resumed training would not be the same run, start a new one")
            model = load_algorithm(cfg, zip_path, venv.engine.lm, env=env)
            venv._reset_seeds()  # .load() seeded the env again; the restored RNG state takes over
            restore_rng(state, venv.engine)
            restore_buffers(state, model)
        except ConfigError as e:
            if not isinstance(e, DamagedModelError):
                raise
            problems.append(f"{zip_path.name}: {e}")
            print(f"warning: checkpoint at {steps} steps is damaged ({problems[-1]}); trying an earlier one")
            continue
        except DAMAGED as e:
            problems.append(f"{zip_path.name}: {type(e).__name__}: {e}")
            print(f"warning: checkpoint at {steps} steps is damaged ({problems[-1]}); trying an earlier one")
            continue
        if problems:
            print(f"warning: resuming from the newest intact checkpoint, {steps} steps")
        model._last_obs = None  # start fresh episodes: the engine's mid-episode state is not saved
        return model, steps
    latest_checkpoint(run_dir)  # no checkpoint at all: its own error
    raise ConfigError(f"cannot resume {run_dir}: every checkpoint is damaged ({'; '.join(problems)})")


def best_recorded(run_dir: Path, cfg: Config) -> float:
    """The score of best_model.zip as recorded beside it (it may come from steps a resume re-runs,
    whose lines metrics.jsonl no longer holds); -inf when absent or for another metric."""
    import json

    try:
        info = json.loads((run_dir / BEST_INFO).read_text())
        if (run_dir / "best_model.zip").is_file() and info["metric"] == cfg.training.best_metric:
            return float(info["value"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return float("-inf")


def save_resumed_config(cfg: Config, run_dir: Path, steps: int) -> None:
    """config.yaml stays as the run was made; a resume whose overrides change it writes its own file."""
    text = cfg.to_yaml()
    if (run_dir / "config.yaml").read_text() != text:
        write_text_atomic(run_dir / f"config.resume_{steps}.yaml", text)


def _train_and_evaluate(cfg: Config, lm: Any, model: Any, env: Any, venv: LayerProgramVecEnv, eval_engine: Any,
                        test_task: Any, stores: dict[str, Any], refs: dict[str, Any], run_dir: Path,
                        best: float, fresh: bool) -> Path:
    """Train to ``training.total_timesteps`` with the callbacks, save the model and evaluate on test."""
    print(f"run folder: {run_dir}")

    wandb_run = start_run(cfg, run_dir, run_dir.name)
    logger = configure(str(run_dir), ["stdout"])
    logger.output_formats.append(JsonlWriter(run_dir / "metrics.jsonl"))
    if wandb_run is not None:
        logger.output_formats.append(WandbWriter(wandb_run))
    model.set_logger(logger)

    callbacks = CallbackList([
        EpisodeMetricsCallback(venv.engine),
        ProgramEvalCallback(eval_engine, cfg.training.eval_freq, cfg.training.score_penalty,
                            cfg.training.best_metric, run_dir, best=best, min_delta=cfg.training.best_min_delta,
                            eval_at_start=cfg.agent.warm_start is not None),
        CheckpointWithRngCallback(run_dir, cfg.training.checkpoint_freq, venv.engine),
    ])
    exit_code = 1
    try:
        remaining = cfg.training.total_timesteps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=callbacks, progress_bar=cfg.training.progress_bar,
                        reset_num_timesteps=fresh)
        save_model_atomic(model, run_dir / "model.zip")
        for split, store in stores.items():
            store.save(refs[split])  # optional: a cache that cannot be written is a warning
        result = final_evaluation(lm, cfg, model, test_task, run_dir)
        log_summary(wandb_run, tracking_summary(result))
        exit_code = 0
    finally:
        logger.close()
        finish_run(wandb_run, exit_code)
    print_summary(result)
    print(f"run folder: {run_dir}")
    return run_dir


def final_evaluation(lm: Any, cfg: Config, model: Any, task: Any, run_dir: Path) -> dict[str, Any]:
    """Every method (the best model if evaluation saved one, else the final; the full model; the static
    baselines at matched compute) on the test split; writes records, report.md and plots, ``eval.json`` last."""
    import shlex

    best = run_dir / "best_model.zip"
    policy = model
    if best.is_file():
        try:
            policy = load_algorithm(cfg, best, lm)
        except DamagedModelError as e:  # never lose a finished run to a damaged side file
            print(f"warning: {e}; evaluating the final model instead")
            best = run_dir / "model.zip"
    tau = threshold_for_target(lm, cfg, policy, cfg.training.target_compute)
    return evaluate_and_report(
        lm, cfg, policy, task, run_dir, show_progress=cfg.training.progress_bar, skip_threshold=tau,
        records_file="eval_records.jsonl", result_file=EVAL_FILE,
        command=shlex.join(["polar-rl", "evaluate", str(run_dir), "--split", task.split]),
        extra={"policy_checkpoint": best.name if best.is_file() else "model.zip",
               "num_timesteps": int(model.num_timesteps)},
    )


def tracking_summary(result: dict[str, Any]) -> dict[str, float]:
    """Flat ``test/<method>/<metric>`` numbers for the W&B summary."""
    out = {}
    for name, m in result["methods"].items():
        if m.get("aggregate"):
            continue
        for key in ("accuracy", "layer_calls", "compute_fraction", "flops_fraction", "delta_vs_full"):
            if m.get(key) is not None:
                out[f"test/{name}/{key}"] = m[key]
        out[f"test/{name}/mcnemar_p"] = m["mcnemar"]["p_value"]
    return out


# ---- command line ------------------------------------------------------------------------------


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (only values that differ from the defaults)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue this run folder from its latest checkpoint")
    add_config_arguments(parser)
    return parser


def config_from_args(argv: Sequence[str], prog: str | None = None) -> tuple[Config, Path | None]:
    """Parse ``argv`` into the config (defaults -> YAML -> overrides) and the folder to resume."""
    args, unknown = make_parser(prog).parse_known_args(argv)
    overrides = overrides_from_args(args) + list(unknown)  # unknown --keys get load_config's hints
    if args.resume is None:
        return load_config(args.config, overrides), None
    if args.config is not None:
        raise ConfigError("--resume takes the run's own config.yaml; drop --config")
    for token in overrides:
        key = str(token)[2:].split("=", 1)[0]
        if str(token).startswith("--") and not key.startswith(RESUMABLE_SECTIONS):
            raise ConfigError(f"--resume: only training.* and tracking.* settings may change, got --{key}")
    run_dir = args.resume
    if not run_dir.is_dir():
        raise ConfigError(f"cannot resume {run_dir}: no such folder")
    latest_checkpoint(run_dir)  # a folder without a checkpoint fails here, naming the folder
    if (run_dir / EVAL_FILE).exists():
        raise ConfigError(f"cannot resume {run_dir}: the run is complete ({EVAL_FILE} exists)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml (not a run folder)")
    return load_config(run_dir / "config.yaml", overrides), run_dir


def run_cli(argv: Sequence[str], prog: str = "polar-rl train", command: Sequence[str] | None = None) -> int:
    cfg, resume = config_from_args(argv, prog)
    main(cfg, resume=resume, argv=command)
    return 0


if __name__ == "__main__":
    from polar_rl.agents.cli import invocation
    from polar_rl.agents.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]], command_line=invocation()))
