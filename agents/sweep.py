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
holds the sweep's state: run folders relative to the sweep folder, and the base config's sha256
(``--resume`` refuses a base config edited since). ``--resume`` never reruns a finished or failed
trial, resumes an interrupted one from its latest checkpoint, and waits for (then adopts) a trial
whose run folder is still locked by a live process. Trials get SIGTERM when their driver dies
(Linux: the parent-death signal), so a killed driver leaves no trial running unnoticed.
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
from collections.abc import Callable, Sequence
from contextlib import suppress
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
)
from polar_rl.config import ConfigError, shorten
from polar_rl.config_sources import load_config, read_yaml
from polar_rl.fileio import sha256, slug, write_json_atomic

SWEEP_FILE = "sweep.json"
#: 2: run folders relative to the sweep folder, the base config's sha256; 1 (read): run folders
#: relative to the working directory of the time (always ``<sweep folder>/runs/<name>``)
FORMAT = 2
FORMATS = (1, 2)
#: trial states that never change again (the ``sweeps`` engine's RunState values)
TERMINAL = ("finished", "failed", "crashed", "killed")
#: metrics a trial logs that a sweep may optimise: the validation evaluations during training, and
#: the final test numbers (``test/<method>/<metric>``; selecting on test is reading it more than once)
METRICS = ("eval/score", "eval/accuracy", "eval/compute_fraction", "eval/layer_calls", "eval/correction_rate",
           "eval/retention_rate")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}")
POLL_SECONDS = 2.0
#: what the command of a sweep must run (after its macros and ``polar-rl`` are expanded)
TRAIN = [sys.executable, "-m", "polar_rl.agents.cli", "train"]
ARGS_MACROS = ("${args}", "${args_no_boolean_flags}")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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
    """The sweep config file as a mapping, read by the one YAML reader of user files (duplicate keys
    and alias bombs refused)."""
    data = read_yaml(path, "sweep config")
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
    config key and every value it can take is valid there, the metric is one a trial logs, the
    command's macros are known and it runs ``polar-rl train`` with ``${args}``. ConfigError at the first
    problem (the engine's schema problems all at once)."""
    problems = list(dict.fromkeys(_engine().schema_violations_from_proposed_config(sweep_cfg)))
    if problems:
        raise ConfigError(f"sweep config {where}: " + "; ".join(problems))
    if sweep_cfg["method"] not in ("grid", "random", "bayes"):
        raise ConfigError(f"sweep config {where}: method {sweep_cfg['method']!r} is not run here; use grid, random "
                          f"or bayes")
    base = base_config_path(sweep_cfg)
    if base is not None and not Path(base).is_file():
        raise ConfigError(f"sweep config {where}: the command's --config {base!r} does not exist "
                          f"(read from the working directory, {os.getcwd()})")
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
    check_command(sweep_cfg, where)


def check_command(sweep_cfg: dict[str, Any], where: str) -> None:
    """ConfigError unless the command runs ``polar-rl train`` with the trial's ``${args}``: a trial is
    finished when train writes its eval.json, and without the arguments every trial is the same run."""
    raw = [str(t) for t in sweep_cfg.get("command") or []]
    shown = shorten(" ".join(raw), 120) if raw else "(none: W&B's default, ${interpreter} ${program} ${args})"
    if expand_command(sweep_cfg, {})[: len(TRAIN)] != TRAIN:
        raise ConfigError(f"sweep config {where}: command {shown} does not run polar-rl train; a trial is "
                          f"a training run: command: [polar-rl, train, --config, FILE, ${{args}}]")
    if not any(t in ARGS_MACROS for t in raw):
        raise ConfigError(f"sweep config {where}: command {shown} has no ${{args}}, so every trial would "
                          f"train the same config; add ${{args}}")


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
    run_dir: str = ""  # relative to the sweep folder (``runs/<name>``); absolute ones are read as they are
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


def run_path(folder: Path, entry: str) -> Path:
    """A trial's run folder from its ``sweep.json`` entry: relative to the sweep folder (or absolute)."""
    path = Path(entry)
    return path if path.is_absolute() else Path(folder) / path


def _state_problem(raw: Any) -> str | None:
    """What is wrong with the parsed ``sweep.json`` (its layout, not its values), or None."""
    if not isinstance(raw, dict):
        return f"expected a JSON object, got {type(raw).__name__}"
    if raw.get("format") not in FORMATS:
        return f"format {shorten(raw.get('format'))}; this polar-rl reads {' and '.join(map(str, FORMATS))}"
    if not isinstance(raw.get("trials"), list):
        return f"trials: expected a list, got {shorten(raw.get('trials'))}"
    for i, trial in enumerate(raw["trials"]):
        if not isinstance(trial, dict):
            return f"trials[{i}]: expected an object, got {shorten(trial)}"
        for key, kind in (("name", str), ("state", str), ("run_dir", str), ("params", dict)):
            if not isinstance(trial.get(key), kind):
                return f"trials[{i}].{key}: expected a {kind.__name__}, got {shorten(trial.get(key))}"
    return None


def read_state(folder: Path) -> dict[str, Any]:
    """``folder/sweep.json``, its layout checked, format 1's run folders rewritten relative to the sweep
    folder. ConfigError naming the file and the problem (not a sweep folder, truncated, damaged)."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a sweep folder (no {SWEEP_FILE})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): the file is "
                          f"truncated or damaged") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({shorten(str(e), 120)})") from None
    problem = _state_problem(raw)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    if raw["format"] == 1:  # was <sweep folder as typed then>/runs/<name>
        for trial in raw["trials"]:
            trial["run_dir"] = str(Path("runs") / Path(trial["run_dir"]).name)
    return raw


@dataclass
class Sweep:
    folder: Path
    config: dict[str, Any]
    config_path: str
    group: str
    trials: list[Trial] = field(default_factory=list)
    #: sha256 of the base config (the command's --config) when the sweep started; None: it names none
    base_sha256: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / SWEEP_FILE

    def run_path(self, trial: Trial) -> Path:
        return run_path(self.folder, trial.run_dir)

    def save(self) -> None:
        write_json_atomic(self.path, {
            "format": FORMAT, "config": self.config, "config_path": self.config_path, "group": self.group,
            "base_sha256": self.base_sha256, "trials": [t.__dict__ for t in self.trials]})

    @classmethod
    def load(cls, folder: Path) -> Sweep:
        raw = read_state(folder)
        for key, kind in (("config", dict), ("config_path", str), ("group", str)):
            if not isinstance(raw.get(key), kind):
                raise ConfigError(f"{folder / SWEEP_FILE}: {key}: expected a {kind.__name__}, got {shorten(raw.get(key))}")
        trials = []
        for i, t in enumerate(raw["trials"]):
            try:
                trials.append(Trial(**t))
            except TypeError as e:
                raise ConfigError(f"{folder / SWEEP_FILE}: trials[{i}]: {e}") from None
        return cls(folder, raw["config"], raw["config_path"], raw["group"], trials, raw.get("base_sha256"))


def check_base_config(sweep: Sweep) -> None:
    """ConfigError when the base config's content is not what the sweep started with (sha256); a
    sweep that recorded none (format 1) pins it now."""
    base = base_config_path(sweep.config)
    if base is None:
        return
    if not Path(base).is_file():
        raise ConfigError(f"cannot resume {sweep.folder}: its base config {base!r} does not exist (read from "
                          f"the working directory, {os.getcwd()})")
    now = sha256(base)
    if sweep.base_sha256 is None:
        print(f"[sweep] {base}: pinned now (sha256 {now}); this sweep recorded no hash when it started")
        sweep.base_sha256 = now
    elif now != sweep.base_sha256:
        raise ConfigError(f"cannot resume {sweep.folder}: its base config {base} changed since the sweep "
                          f"started (sha256 {sweep.base_sha256} then, {now} now); restore it or start a new sweep")


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


def parent_death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that has the kernel send the trial SIGTERM when its driver dies by any
    signal, SIGKILL included (``prctl(PR_SET_PDEATHSIG)``: the driver can run no code then). None
    elsewhere; there ``--resume`` still finds a trial that outlived its driver by its run lock."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    driver = os.getpid()
    args = [ctypes.c_ulong(int(signal.SIGTERM))] + [ctypes.c_ulong(0)] * 3

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, *args)
        if os.getppid() != driver:  # the driver died before prctl: no signal would come
            os._exit(1)

    return preexec


@dataclass
class Running:
    """A trial this driver started: its process (a session of its own) and its log file."""

    trial: Trial
    process: subprocess.Popen
    log: Any

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait(self) -> None:
        self.process.wait()

    def close(self) -> None:
        self.log.close()


@dataclass
class Adopted:
    """A trial whose run folder another live process holds locked (a trial that outlived an earlier
    driver, or an ``evaluate`` of it): watched until the lock is free, then decided again."""

    trial: Trial
    lock: RunLock
    pid: str

    def poll(self) -> int | None:
        """None while the lock is held; then the holder's exit code is not known: -1."""
        return None if self.lock.holder() is not None else -1

    def stop(self) -> None:
        if self.pid.isdigit():
            with suppress(ProcessLookupError, PermissionError):
                os.kill(int(self.pid), signal.SIGTERM)

    def wait(self) -> None:
        pass  # not this driver's child; a later --resume waits for it if it still runs

    def close(self) -> None:
        pass


class LocalSweep:
    """Run a sweep's trials on this machine, ``parallel`` at a time, with the ``sweeps`` engine choosing
    each trial's parameters and, when the config asks, stopping trials early (hyperband)."""

    def __init__(self, sweep: Sweep, parallel: int = 1, threads: int | None = None) -> None:
        self.sweep, self.parallel = sweep, max(1, parallel)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.parallel)
        self.running: list[Running | Adopted] = []
        self.pending: list[Trial] = []
        self.preexec = parent_death_signal()

    def engine_runs(self) -> list[Any]:
        return [t.to_engine(trial_history(self.sweep.run_path(t))) for t in self.sweep.trials]

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
        """Start ``command`` for ``trial`` in a session of its own (so SIGTERM to its group reaches every
        process it starts), dying with this driver (``parent_death_signal``)."""
        logs = self.sweep.folder / "logs"
        logs.mkdir(exist_ok=True)
        log = open(logs / f"{trial.name}.log", "a")  # noqa: SIM115 (closed when the trial ends)
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        print(f"[sweep] {trial.name}: {' '.join(f'{k}={v}' for k, v in trial.params.items())}")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.child_env(trial.params),
                                   start_new_session=True, preexec_fn=self.preexec)
        self.running.append(Running(trial, process, log))
        self.sweep.save()

    def new_trial(self, params: dict[str, Any]) -> None:
        index = len(self.sweep.trials)
        name = f"trial-{index:03d}"
        trial = Trial(name=name, params=params, run_dir=f"runs/{name}", started=_now())
        self.sweep.trials.append(trial)
        command = expand_command(self.sweep.config, params) + [
            f"--output_dir={self.sweep.folder / 'runs'}", f"--run_name={name}", f"--tracking.group={self.sweep.group}"]
        self.start(trial, command)

    def adopt(self, trial: Trial) -> bool:
        """Watch ``trial`` instead of running it when a live process holds its run folder's lock."""
        lock = RunLock(self.sweep.run_path(trial))
        pid = lock.holder()
        if pid is None:
            return False
        print(f"[sweep] {trial.name}: {lock.run_dir} is held by pid {pid} (a trial left by an earlier driver, "
              f"or another command); waiting for it, then using what it leaves")
        self.running.append(Adopted(trial, lock, pid))
        return True

    def restart(self, trial: Trial) -> None:
        """An interrupted trial: watched while another process holds its run folder; recorded as killed
        when it was stopped early, as finished when its run completed (eval.json is there) without this
        driver; else resumed from the latest checkpoint, or started over under a new run folder."""
        if self.adopt(trial):
            return
        run_dir = self.sweep.run_path(trial)
        if trial.early_terminated:
            self.record_end(trial, None)
            return
        if (run_dir / EVAL_FILE).is_file():
            print(f"[sweep] {trial.name}: its run completed without this driver; recorded as finished")
            self.record_end(trial, 0)
            return
        trial.attempts += 1
        trial.state, trial.exitcode, trial.ended, trial.started = "running", None, None, _now()
        if run_dir.is_dir() and list_checkpoints(run_dir):
            command = [*TRAIN, "--resume", str(run_dir)]
        else:
            name = f"{trial.name}-attempt{trial.attempts}"
            trial.run_dir = str(Path(trial.run_dir).parent / name)
            command = expand_command(self.sweep.config, trial.params) + [
                f"--output_dir={run_dir.parent}", f"--run_name={name}", f"--tracking.group={self.sweep.group}"]
        self.start(trial, command)

    def record_end(self, t: Trial, code: int | None) -> Trial:
        """Record that ``t``'s run ended with exit ``code``: its state, its summary, and the sweep file."""
        t.exitcode, t.ended = code, _now()
        finished = code == 0 and (self.sweep.run_path(t) / EVAL_FILE).is_file()
        t.state = "killed" if t.early_terminated else ("finished" if finished else "failed")
        t.summary = to_builtin(trial_summary(self.sweep.run_path(t)))
        self.sweep.save()
        return t

    def ended(self, r: Running | Adopted, code: int) -> None:
        """``r`` ended: record it, or (an adopted trial, or one refused its run folder's lock because
        another process holds it) decide again: never a lock refusal recorded as a failure."""
        if isinstance(r, Adopted) or (code != 0 and RunLock(self.sweep.run_path(r.trial)).holder() is not None):
            self.pending.insert(0, r.trial)
            return
        t = self.record_end(r.trial, code)
        why = ""
        if t.state == "failed":
            why = f" (no {EVAL_FILE} in {self.sweep.run_path(t)})" if code == 0 else ""
            why += f"; its output: {self.sweep.folder / 'logs' / (t.name + '.log')}"
        print(f"[sweep] {t.name}: {t.state} (exit {code}){why}")

    def reap(self) -> None:
        """Record the trials that ended; stop those the early-termination rule says to stop."""
        for r in list(self.running):
            code = r.poll()
            if code is None:
                continue
            self.running.remove(r)
            r.close()
            self.ended(r, code)
        if self.running and self.sweep.config.get("early_terminate"):
            for r in self.running:
                r.trial.summary = to_builtin(trial_summary(self.sweep.run_path(r.trial)))
            sweeps = _engine()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stop = {r.name for r in sweeps.stop_runs(self.sweep.config, self.engine_runs())}
            for r in self.running:
                if r.trial.name in stop and not r.trial.early_terminated:
                    print(f"[sweep] {r.trial.name}: stopped early by {self.sweep.config['early_terminate']['type']}")
                    r.trial.early_terminated = True
                    r.stop()

    def run(self, count: int | None) -> int:
        """Resume interrupted trials, then start new ones until ``count`` new trials have started (or the
        grid is exhausted). Returns the number of trials started."""
        started = 0
        self.pending = [t for t in self.sweep.trials if t.state not in TERMINAL]
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the trials too, like Ctrl-C
        try:
            while True:
                self.reap()
                if len(self.running) < self.parallel:
                    if self.pending:
                        self.restart(self.pending.pop(0))
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
                r.stop()
            for r in self.running:
                r.wait()
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
        check_base_config(sweep)
        validate(sweep.config, str(sweep.path))
        lock = RunLock(sweep.folder, action="resuming the sweep", what="sweep folder")
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
        sweep = new_sweep(args.config, sweep_cfg, args.out)
        lock = RunLock(sweep.folder, action="starting a sweep there", what="sweep folder")
    with lock:
        if args.resume is None and sweep.path.exists():  # under the lock: two starts cannot both save
            raise ConfigError(f"--out {sweep.folder} already holds a sweep; continue it with --resume {sweep.folder}")
        sweep.save()  # a resumed one: in this format, its base config pinned
        print(f"[sweep] {sweep.folder} (group {sweep.group}, method {sweep.config['method']})")
        LocalSweep(sweep, parallel=args.parallel).run(args.count)
    done = [t for t in sweep.trials if t.state == "finished"]
    print(f"[sweep] {len(done)} of {len(sweep.trials)} trials finished: {sweep.path}")
    if not args.no_pareto and done:
        from polar_rl.agents.pareto import write_frontier

        write_frontier(sweep.folder)
    return 0 if done or not sweep.trials else 1


def new_sweep(config: Path, sweep_cfg: dict[str, Any], out: Path | None) -> Sweep:
    """A new sweep's state (not saved yet) in ``out`` (created; default ``sweeps/<config>__<time>``),
    its base config pinned by sha256."""
    folder = out if out is not None else Path("sweeps") / f"{slug(str(config))}__{datetime.now():%Y%m%d-%H%M%S}"
    check_writable(folder, "--out")
    folder.mkdir(parents=True, exist_ok=True)
    base = base_config_path(sweep_cfg)
    return Sweep(folder, sweep_cfg, str(config), f"sweep-{slug(folder.name)}",
                 base_sha256=None if base is None else sha256(base))
