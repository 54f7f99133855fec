"""The run folder: its name, the files that say how it was made, checkpoints, metrics.jsonl.

A run folder (``runs/<task>__<model>__lam<lambda>__s<seed>__<YYYYmmdd-HHMMSS>/``) holds::

    config.yaml        the resolved config (seed included)
    command.txt        the command line(s) that made it (one line per start or resume)
    git.txt            commit hash and dirty flag of the code, or "unknown"
    seed.txt           the seed
    checkpoints/       rl_model_<steps>_steps.zip + rl_model_rng_<steps>_steps.json (RNG states, JSON)
    metrics.jsonl      one JSON line per SB3 log dump (rollout summaries and evaluations)
    best_model.zip     best policy on ``training.best_metric`` (best_model.json: its score and step)
    model.zip          final policy
    eval_records.jsonl per-example results of the final evaluation
    eval.json          final evaluation, written last: a run without it is not complete
    eval_<split>.json  later re-evaluations (``polar-rl evaluate RUN_DIR --split <split>``)
    config.resume_<steps>.yaml  the config of a resumed part when its overrides changed it
    .lock              held (flock) by the one process that writes the folder
    wandb/, wandb_id.txt  the W&B run (offline runs sync with ``wandb sync RUN_DIR/wandb/offline-run-*``)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter

from polar_rl.config import Config, ConfigError
from polar_rl.fileio import atomic_open, slug, to_jsonable

CHECKPOINT_PREFIX = "rl_model"
_CKPT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)_steps\.zip$")
EVAL_FILE = "eval.json"


def run_name(cfg: Config, task_name: str, model_name: str, now: datetime | None = None) -> str:
    """``<task>__<model>__lam<lambda>__s<seed>__<YYYYmmdd-HHMMSS>`` (or ``cfg.run_name``)."""
    if cfg.run_name is not None:
        return cfg.run_name
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    lam = f"{cfg.env.compute_penalty:g}"
    return f"{slug(task_name)}__{slug(model_name)}__lam{lam}__s{cfg.seed}__{stamp}"


def check_writable(folder: str | Path, what: str = "output_dir") -> None:
    """ConfigError unless files can be created in ``folder`` (or, when it does not exist yet, in its
    nearest existing parent). Creates nothing that stays: the probe file is removed at once."""
    path = Path(folder).expanduser()
    probe_in = path
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise ConfigError(f"{what}={str(folder)!r}: {probe_in} is not a folder, so nothing can be written there")
    try:
        with tempfile.TemporaryFile(dir=probe_in, prefix=".polar-rl-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what}={str(folder)!r}: cannot write in {probe_in} ({e.strerror or e})") from None


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """Make a new, empty run folder; a taken name gets ``-1``, ``-2``, ... appended."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = root / (name if i == 0 else f"{name}-{i}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as e:
        raise ConfigError(f"output_dir={str(output_dir)!r}: cannot create a run folder there ({e})") from None
    raise ConfigError(f"cannot create a run folder named {name!r} under {root}: 1000 names taken")


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run folder (or a sweep folder), held while one process writes it
    (``fcntl.flock``, released by the kernel when the process dies, so a killed run never leaves a
    stale lock). ``what`` and ``action`` word the refusal for the command that asks: ``"sweep folder"``,
    ``"resuming the sweep"``."""

    def __init__(self, run_dir: Path, action: str = "trying again", what: str = "run folder") -> None:
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_FILE
        self.action, self.what = action, what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.what} {self.run_dir} is in use by another process (pid {holder}); "
                              f"wait for it to finish or stop it before {self.action}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> str | None:
        """The pid (as written in the lock file, or ``"unknown"``) of the process holding the lock now;
        None when it is free. Probes with a non-blocking flock released at once; creates nothing."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)  # releases the probe's flock, if it got one
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- provenance ----------------------------------------------------------------------------


def git_description(where: Path | None = None) -> str:
    """``commit <hash>\\ndirty <true|false>`` of the repository holding this code, or ``unknown``."""
    cwd = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown\n"
    return f"commit {head}\ndirty {'true' if status.strip() else 'false'}\n"


def write_provenance(run_dir: Path, argv: Sequence[str], seed: int) -> None:
    """command.txt, git.txt and seed.txt of a new run."""
    (run_dir / "command.txt").write_text(shlex.join(argv) + "\n")
    (run_dir / "git.txt").write_text(git_description())
    (run_dir / "seed.txt").write_text(f"{seed}\n")


def append_command(run_dir: Path, argv: Sequence[str]) -> None:
    with open(run_dir / "command.txt", "a") as f:
        f.write(shlex.join(argv) + "\n")


# ---- checkpoints -----------------------------------------------------------------------------


def checkpoint_paths(run_dir: Path, steps: int) -> tuple[Path, Path]:
    """(model zip, RNG-state JSON file) of the checkpoint at ``steps`` env steps."""
    folder = run_dir / "checkpoints"
    return (
        folder / f"{CHECKPOINT_PREFIX}_{steps}_steps.zip",
        folder / f"{CHECKPOINT_PREFIX}_rng_{steps}_steps.json",
    )


def legacy_rng_path(run_dir: Path, steps: int) -> Path:
    """The pickled RNG file older versions wrote: never unpickled (a pickle can run any code)."""
    return run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}_rng_{steps}_steps.pkl"


def _checkpoint_zips(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name)))


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (zip and RNG file both present), ascending."""
    return [s for s in _checkpoint_zips(run_dir) if checkpoint_paths(run_dir, s)[1].is_file()]


def legacy_checkpoints(run_dir: Path) -> list[Path]:
    """The legacy ``.pkl`` RNG files of checkpoints that have no JSON one: such a checkpoint counts as
    one without RNG state (incomplete), and its pickle is never loaded."""
    return [legacy_rng_path(run_dir, s) for s in _checkpoint_zips(run_dir)
            if legacy_rng_path(run_dir, s).is_file() and not checkpoint_paths(run_dir, s)[1].is_file()]


def legacy_note(run_dir: Path) -> str:
    """One clause naming the legacy RNG pickles of ``run_dir`` (empty when there are none)."""
    names = [p.name for p in legacy_checkpoints(run_dir)]
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{shown}: legacy pickled RNG state, never loaded (a pickle can run code); "
            f"{'that checkpoint counts' if len(names) == 1 else 'those checkpoints count'} as without RNG state")


def latest_checkpoint(run_dir: Path) -> int:
    """Steps of the newest complete checkpoint; ConfigError naming the folder when there is none."""
    steps = list_checkpoints(run_dir)
    if not steps:
        note = legacy_note(run_dir)
        raise ConfigError(
            f"cannot resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'} "
            f"(expected {CHECKPOINT_PREFIX}_<steps>_steps.zip with its RNG file)" + (f"; {note}" if note else "")
        )
    return steps[-1]


# ---- metrics.jsonl ---------------------------------------------------------------------------


class JsonlWriter(KVWriter):
    """SB3 logger output: appends each dump as one JSON line ``{"step": ..., key: value, ...}``.

    Unlike SB3's ``json`` format it appends, so a resumed run keeps the lines written before.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        torn = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if torn:  # a killed run left half a line: end it so the next line stays whole
            self.file.write("\n")

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        row: dict[str, Any] = {"step": int(step)}
        for key, value in sorted(key_values.items()):
            excluded = key_excluded.get(key) or ()
            if "json" in excluded:
                continue
            if hasattr(value, "dtype") and getattr(value, "size", 1) == 1:
                value = value.item()
            if isinstance(value, bool | int | float | str) or value is None:
                row[key] = value
        self.file.write(json.dumps(to_jsonable(row)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_metrics(run_dir: Path, steps: int) -> int:
    """Keep only the lines of ``metrics.jsonl`` logged at or before ``steps`` (the checkpoint a run
    resumes from), so a resumed run's log reads as one run; returns how many lines were dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        with suppress(json.JSONDecodeError, TypeError, KeyError, ValueError):
            if int(json.loads(line)["step"]) <= steps:
                keep.append(line)
    if len(keep) < len(lines):
        with atomic_open(path) as f:
            f.write("".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of ``run_dir/metrics.jsonl`` that parses as JSON, in file order, returned as parsed
    (dict or not). A line that is not JSON (a torn last line from a killed run, a blank or damaged line
    anywhere) is skipped without a word; bytes that are not UTF-8 raise ``UnicodeDecodeError``.
    No file: ``[]``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows
