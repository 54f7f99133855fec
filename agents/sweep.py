"""Sweeps over the compute penalty (or any config key): W&B's sweep configs, online or offline.

    # offline, on this machine: W&B's open-source search engine (the ``sweeps`` package)
    polar-rl sweep configs/sweeps/compute_penalty.yaml --local --out sweeps/lam
    polar-rl sweep --resume sweeps/lam          # continue an interrupted sweep
    polar-rl pareto sweeps/lam                  # the accuracy-compute frontier (also run at the end)

    # online: the stock W&B flow (``wandb sweep`` + ``wandb agent``, one agent per machine)
    polar-rl sweep configs/sweeps/compute_penalty.yaml --count 4

A sweep config is a W&B sweep config (method grid / random / bayes, ``metric``, ``parameters``,
optional ``early_terminate`` hyperband, ``command`` with ``${args}``). Every parameter name is a
config key (``env.compute_penalty``); they are checked, with every listed value and bound, before
any trial starts. Offline, each trial is a normal run folder ``SWEEP_DIR/runs/<trial>`` logged offline
to W&B under the sweep's group, and ``SWEEP_DIR/sweep.json`` (rewritten atomically at each change)
holds the sweep's state: ``--resume`` never reruns a finished or failed trial and resumes an
interrupted one from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from polar_rl.agents.run_dir import (
    EVAL_FILE,
    RunLock,
    check_writable,
    list_checkpoints,
    read_metrics,
    slug,
    write_json_atomic,
)
from polar_rl.config import ConfigError
from polar_rl.config_sources import load_config

SWEEP_FILE = "sweep.json"
FORMAT = 1
#: trial states that never change again (the ``sweeps`` engine's RunState values)
TERMINAL = ("finished", "failed", "crashed", "killed")
#: metrics a trial logs that a sweep may optimise: the validation evaluations during training, and
#: the final test numbers (``test/<method>/<metric>``; selecting on test is reading it more than once)
METRICS = ("eval/score", "eval/accuracy", "eval/compute_fraction", "eval/layer_calls", "eval/correction_rate",
           "eval/retention_rate")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}")
POLL_SECONDS = 2.0


def _engine() -> Any:
    """The ``sweeps`` package (W&B's search engine), quiet about its pydantic-1 style models."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def to_builtin(value: Any) -> Any:
    """numpy scalars (the engine returns them) and containers of them -> plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    return value


# ---- the sweep config ------------------------------------------------------------------------------


def read_sweep_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep config {path}: expected a mapping, got {type(data).__name__}")
    return data


def base_config_path(sweep_cfg: dict[str, Any]) -> str | None:
    """The ``--config FILE`` of the sweep's command (the trials' base config), if it names one."""
    command = [str(t) for t in sweep_cfg.get("command") or []]
    for i, token in enumerate(command):
        if token == "--config" and i + 1 < len(command):
            return command[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def parameter_samples(spec: dict[str, Any]) -> list[Any]:
    """Every value a parameter spec names (its ``value``, ``values``, ``min`` and ``max``)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    return [spec[k] for k in ("min", "max") if k in spec]


def validate(sweep_cfg: dict[str, Any], where: str) -> None:
    """The engine's schema check (method, distributions, min < max, ...), then: every parameter is a
    config key and every value it can take is valid there, the metric is one a trial logs, and the
    command's macros are known. One ConfigError with every problem found."""
    problems = list(dict.fromkeys(_engine().schema_violations_from_proposed_config(sweep_cfg)))
    if problems:
        raise ConfigError(f"sweep config {where}: " + "; ".join(problems))
    if sweep_cfg["method"] not in ("grid", "random", "bayes"):
        raise ConfigError(f"sweep config {where}: method {sweep_cfg['method']!r} is not run here; use grid, random "
                          f"or bayes")
    base = base_config_path(sweep_cfg)
    if base is not None and not Path(base).is_file():
        raise ConfigError(f"sweep config {where}: the command's --config {base!r} does not exist")
    for name, spec in sweep_cfg["parameters"].items():
        if not isinstance(spec, dict):
            continue
        for value in parameter_samples(spec):
            try:
                load_config(base, [f"--{name}={format_value(value)}"])
            except ConfigError as e:
                raise ConfigError(f"sweep config {where}: parameter {name!r} = {value!r}: {e}") from None
    metric = (sweep_cfg.get("metric") or {}).get("name")
    if metric is not None and metric not in METRICS and not re.fullmatch(r"test/[a-z0-9_]+/[a-z_]+", metric):
        raise ConfigError(f"sweep config {where}: metric {metric!r} is not logged by polar-rl train; "
                          f"use one of {', '.join(METRICS)} or test/<method>/<metric>")
    for token in sweep_cfg.get("command") or []:
        for macro in re.findall(r"\$\{[^}]*\}", str(token)):
            if macro not in MACROS:
                raise ConfigError(f"sweep config {where}: command macro {macro} is not supported; "
                                  f"use {', '.join(MACROS)}")


def format_value(value: Any) -> str:
    """A value as the command line's ``--key=value`` (YAML flow style: lists, null, true/false)."""
    value = to_builtin(value)
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def expand_command(sweep_cfg: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The trial's command line: the config's ``command`` with W&B's macros expanded as ``wandb agent``
    does; ``polar-rl`` runs as this interpreter's module so the trial uses this installation."""
    command = sweep_cfg.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    args = [f"--{k}={format_value(v)}" for k, v in params.items()]
    out: list[str] = []
    for token in map(str, command):
        if token == "${env}":
            continue
        if token == "${interpreter}":
            out.append(sys.executable)
        elif token == "${program}":
            out.append(str(sweep_cfg.get("program", "polar-rl")))
        elif token in ("${args}", "${args_no_boolean_flags}"):
            out.extend(args)
        elif token == "${args_no_hyphens}":
            out.extend(a[2:] for a in args)
        else:
            out.append(token)
    if out and out[0] == "polar-rl":
        out[:1] = [sys.executable, "-m", "polar_rl.agents.cli"]
    return out


# ---- the sweep's state on disk ---------------------------------------------------------------------


@dataclass
class Trial:
    name: str
    params: dict[str, Any]
    state: str = "running"
    run_dir: str = ""
    exitcode: int | None = None
    started: str = ""
    ended: str | None = None
    attempts: int = 1
    early_terminated: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    def to_engine(self, history: list[dict[str, Any]]) -> Any:
        sweeps = _engine()
        return sweeps.SweepRun(name=self.name, state=self.state, config={k: {"value": v} for k, v in self.params.items()},
                               summaryMetrics=dict(self.summary), sampledHistory=history,
                               stopped=self.early_terminated)


@dataclass
class Sweep:
    folder: Path
    config: dict[str, Any]
    config_path: str
    group: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / SWEEP_FILE

    def save(self) -> None:
        write_json_atomic(self.path, {
            "format": FORMAT, "config": self.config, "config_path": self.config_path, "group": self.group,
            "trials": [t.__dict__ for t in self.trials]})

    @classmethod
    def load(cls, folder: Path) -> Sweep:
        path = folder / SWEEP_FILE
        if not path.is_file():
            raise ConfigError(f"cannot resume {folder}: no {SWEEP_FILE} (not a sweep folder)")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, this polar-rl reads {FORMAT}")
            return cls(folder, raw["config"], raw["config_path"], raw["group"],
                       [Trial(**t) for t in raw["trials"]])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"cannot resume {folder}: {SWEEP_FILE} is unreadable ({e})") from None


def trial_history(run_dir: Path) -> list[dict[str, Any]]:
    """The trial's logged rows that carry evaluation numbers (what hyperband and bayes read)."""
    return [{k: v for k, v in row.items() if k.startswith("eval/") or k == "time/total_timesteps"}
            for row in read_metrics(run_dir) if any(k.startswith("eval/") for k in row)]


def trial_summary(run_dir: Path) -> dict[str, Any]:
    """W&B-style summary: the last logged value of each metric, plus the test numbers of ``eval.json``."""
    summary: dict[str, Any] = {}
    for row in read_metrics(run_dir):
        summary.update({k: v for k, v in row.items() if isinstance(v, int | float)})
    eval_file = run_dir / EVAL_FILE
    if eval_file.is_file():
        from polar_rl.agents.train import tracking_summary

        summary.update(tracking_summary(json.loads(eval_file.read_text())))
    return summary


# ---- running trials --------------------------------------------------------------------------------


@dataclass
class Running:
    trial: Trial
    process: subprocess.Popen
    log: Any


class LocalSweep:
    """Run a sweep's trials on this machine, ``parallel`` at a time, with the ``sweeps`` engine choosing
    each trial's parameters and, when the config asks, stopping trials early (hyperband)."""

    def __init__(self, sweep: Sweep, parallel: int = 1, threads: int | None = None) -> None:
        self.sweep, self.parallel = sweep, max(1, parallel)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.parallel)
        self.running: list[Running] = []

    def engine_runs(self) -> list[Any]:
        return [t.to_engine(trial_history(Path(t.run_dir))) for t in self.sweep.trials]

    def propose(self) -> dict[str, Any] | None:
        """The next parameters from the engine (None: a grid is exhausted)."""
        sweeps = _engine()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suggestion = sweeps.next_run(self.sweep.config, self.engine_runs(), validate=True)
        if suggestion is None:
            return None
        return {k: to_builtin(v["value"]) for k, v in suggestion.config.items()}

    def child_env(self, params: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        env.setdefault("MKL_NUM_THREADS", str(self.threads))
        if not env.get("WANDB_MODE"):
            overrides = [f"--{k}={format_value(v)}" for k, v in params.items()]
            if load_config(base_config_path(self.sweep.config), overrides).tracking.mode == "online":
                env["WANDB_MODE"] = "offline"  # an offline sweep logs offline (``wandb sync`` later)
        return env

    def start(self, trial: Trial, command: list[str]) -> None:
        logs = self.sweep.folder / "logs"
        logs.mkdir(exist_ok=True)
        log = open(logs / f"{trial.name}.log", "a")  # noqa: SIM115 (closed when the trial ends)
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        print(f"[sweep] {trial.name}: {' '.join(f'{k}={v}' for k, v in trial.params.items())}")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.child_env(trial.params),
                                   start_new_session=True)
        self.running.append(Running(trial, process, log))
        self.sweep.save()

    def new_trial(self, params: dict[str, Any]) -> None:
        index = len(self.sweep.trials)
        name = f"trial-{index:03d}"
        runs = self.sweep.folder / "runs"
        trial = Trial(name=name, params=params, run_dir=str(runs / name), started=_now())
        self.sweep.trials.append(trial)
        command = expand_command(self.sweep.config, params) + [
            f"--output_dir={runs}", f"--run_name={name}", f"--tracking.group={self.sweep.group}"]
        self.start(trial, command)

    def restart(self, trial: Trial) -> None:
        """An interrupted trial: resume its run from the latest checkpoint, or start it over. A run that
        completed (its eval.json is there) while the sweep itself died is recorded as finished, not rerun."""
        run_dir = Path(trial.run_dir)
        if (run_dir / EVAL_FILE).is_file():
            print(f"[sweep] {trial.name}: its run completed before the sweep stopped; recorded as finished")
            self.record_end(trial, 0)
            return
        trial.attempts += 1
        trial.state, trial.exitcode, trial.ended, trial.started = "running", None, None, _now()
        if run_dir.is_dir() and list_checkpoints(run_dir):
            command = [sys.executable, "-m", "polar_rl.agents.cli", "train", "--resume", str(run_dir)]
        else:
            name = f"{trial.name}-attempt{trial.attempts}"
            trial.run_dir = str(run_dir.parent / name)
            command = expand_command(self.sweep.config, trial.params) + [
                f"--output_dir={run_dir.parent}", f"--run_name={name}", f"--tracking.group={self.sweep.group}"]
        self.start(trial, command)

    def record_end(self, t: Trial, code: int) -> Trial:
        """Record that ``t``'s run ended with exit ``code``: its state, its summary, and the sweep file."""
        t.exitcode, t.ended = code, _now()
        finished = code == 0 and (Path(t.run_dir) / EVAL_FILE).is_file()
        t.state = "killed" if t.early_terminated else ("finished" if finished else "failed")
        t.summary = to_builtin(trial_summary(Path(t.run_dir)))
        self.sweep.save()
        return t

    def reap(self) -> None:
        """Record the trials that ended; stop those the early-termination rule says to stop."""
        for r in list(self.running):
            code = r.process.poll()
            if code is None:
                continue
            self.running.remove(r)
            r.log.close()
            t = self.record_end(r.trial, code)
            print(f"[sweep] {t.name}: {t.state} (exit {code})" + ("" if t.state == "finished" else
                                                                  f"; its output: {self.sweep.folder / 'logs' / (t.name + '.log')}"))
        if self.running and self.sweep.config.get("early_terminate"):
            for t in self.running:
                t.trial.summary = to_builtin(trial_summary(Path(t.trial.run_dir)))
            sweeps = _engine()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stop = {r.name for r in sweeps.stop_runs(self.sweep.config, self.engine_runs())}
            for r in self.running:
                if r.trial.name in stop and not r.trial.early_terminated:
                    print(f"[sweep] {r.trial.name}: stopped early by {self.sweep.config['early_terminate']['type']}")
                    r.trial.early_terminated = True
                    os.killpg(r.process.pid, signal.SIGTERM)

    def run(self, count: int | None) -> int:
        """Resume interrupted trials, then start new ones until ``count`` new trials have started (or the
        grid is exhausted). Returns the number of trials started."""
        started = 0
        pending = [t for t in self.sweep.trials if t.state not in TERMINAL]
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the trials too, like Ctrl-C
        try:
            while True:
                self.reap()
                if len(self.running) < self.parallel:
                    if pending:
                        self.restart(pending.pop(0))
                        continue
                    if count is None or started < count:
                        params = self.propose()
                        if params is not None:
                            self.new_trial(params)
                            started += 1
                            continue
                        if not self.running:
                            print("[sweep] the grid is exhausted")
                    if not self.running:
                        break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            for r in self.running:
                os.killpg(r.process.pid, signal.SIGTERM)
            for r in self.running:
                r.process.wait()
            print(f"[sweep] interrupted; continue with: polar-rl sweep --resume {self.sweep.folder}")
            raise
        return started


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


# ---- online: the stock W&B flow --------------------------------------------------------------------


def wandb_logged_in() -> bool:
    """Whether W&B credentials are configured (``$WANDB_API_KEY`` or a netrc entry for the API host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "api.wandb.ai")).rstrip("/")
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_online(sweep_cfg: dict[str, Any], count: int | None, project: str, entity: str | None) -> None:
    """``wandb.sweep`` registers the sweep; ``wandb.agent`` runs its ``command`` for each trial. Start more
    agents on other machines with ``wandb agent ENTITY/PROJECT/SWEEP_ID``."""
    import wandb

    sweep_id = wandb.sweep(sweep=sweep_cfg, project=project, entity=entity)
    print(f"[sweep] more agents on other machines: wandb agent {entity + '/' if entity else ''}{project}/{sweep_id}")
    wandb.agent(sweep_id, project=project, entity=entity, count=count)


# ---- command line ----------------------------------------------------------------------------------


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, help="W&B sweep config (YAML), e.g. configs/sweeps/smoke.yaml")
    parser.add_argument("--count", type=int, default=None,
                        help="start at most N new trials (grid default: until exhausted; random and bayes need it)")
    parser.add_argument("--local", action="store_true",
                        help="run offline on this machine (the default when no W&B login is configured)")
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default: sweeps/<config>__<time>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="SWEEP_DIR",
                        help="continue this sweep: finished and failed trials are kept, interrupted ones resumed")
    parser.add_argument("--parallel", type=int, default=1,
                        help="trials at once on this machine (each gets cpu_count / N threads)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the first trial's command")
    parser.add_argument("--no-pareto", action="store_true", help="do not write the frontier at the end")
    return parser


def run_cli(argv: Sequence[str], prog: str = "polar-rl sweep") -> int:
    args = make_parser(prog).parse_args(list(argv))
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    if args.resume is not None:
        if args.config is not None or args.out is not None:
            raise ConfigError("--resume continues a sweep with its own config and folder; drop CONFIG and --out")
        sweep = Sweep.load(args.resume)
        validate(sweep.config, str(sweep.path))
    else:
        if args.config is None:
            raise ConfigError("give a sweep config (e.g. configs/sweeps/smoke.yaml) or --resume SWEEP_DIR")
        sweep_cfg = to_builtin(read_sweep_config(args.config))
        validate(sweep_cfg, str(args.config))
        if args.count is None and sweep_cfg["method"] != "grid":
            raise ConfigError(f"method {sweep_cfg['method']!r} never ends: give --count N")
        if args.dry_run:
            params = {k: v for k, v in LocalSweep(Sweep(Path("."), sweep_cfg, "", "")).propose().items()}  # type: ignore[union-attr]
            print(f"{args.config}: valid; first trial: {shlex.join(expand_command(sweep_cfg, params))}")
            return 0
        local = args.local or not wandb_logged_in() or os.environ.get("WANDB_MODE", "").lower() in ("offline",
                                                                                                   "disabled", "dryrun")
        if not local:
            base = load_config(base_config_path(sweep_cfg))
            run_online(sweep_cfg, args.count, base.tracking.project, base.tracking.entity)
            return 0
        name = f"{slug(str(args.config))}__{datetime.now():%Y%m%d-%H%M%S}"
        folder = args.out if args.out is not None else Path("sweeps") / name
        check_writable(folder, "--out")
        if (folder / SWEEP_FILE).exists():
            raise ConfigError(f"--out {folder} already holds a sweep; continue it with --resume {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        sweep = Sweep(folder, sweep_cfg, str(args.config), f"sweep-{slug(folder.name)}")
        sweep.save()
    with RunLock(sweep.folder):
        print(f"[sweep] {sweep.folder} (group {sweep.group}, method {sweep.config['method']})")
        LocalSweep(sweep, parallel=args.parallel).run(args.count)
    done = [t for t in sweep.trials if t.state == "finished"]
    print(f"[sweep] {len(done)} of {len(sweep.trials)} trials finished: {sweep.path}")
    if not args.no_pareto and done:
        from polar_rl.agents.pareto import write_frontier

        write_frontier(sweep.folder)
    return 0 if done or not sweep.trials else 1
