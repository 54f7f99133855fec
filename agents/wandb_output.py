"""Weights & Biases as one more SB3 logger output.

SB3's logger already collects ``rollout/``, ``train/``, ``time/`` and our ``eval/`` keys; the
stock ``WandbCallback`` forwards none of them unless tensorboard is in between. :class:`WandbWriter`
is a ``KVWriter`` that sends each logger dump to ``wandb.log(values, step=num_timesteps)``.

``tracking.mode``: ``offline`` (default, syncable later with ``wandb sync``), ``online`` or
``disabled``; ``$WANDB_MODE`` overrides it. ``wandb`` is imported only when the mode is not
``disabled``.

Resumed runs: ``metrics.jsonl`` is the run's log of record. A resume truncates it to the checkpoint's
step, so it reads as one run. The W&B run is resumed under its own id, and W&B ignores rows whose step
is not above the last one it holds: for the steps between the checkpoint and the kill it keeps the
values of the killed part, and drops those of the resumed part. Rewinding (``resume_from``) is a
W&B preview feature for online runs only, so we do not use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.logger import KVWriter

from polar_rl.config import Config
from polar_rl.fileio import write_text_atomic

RUN_ID_FILE = "wandb_id.txt"


class WandbWriter(KVWriter):
    """SB3 logger output that calls ``run.log(key_values, step=step)``."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        data = {}
        for key, value in key_values.items():
            if "wandb" in (key_excluded.get(key) or ()):
                continue
            if hasattr(value, "dtype") and getattr(value, "size", 1) == 1:
                value = value.item()
            if isinstance(value, bool | int | float):
                data[key] = value
        if data:
            self.run.log(data, step=int(step))

    def close(self) -> None:
        return None


def start_run(cfg: Config, run_dir: Path, name: str) -> Any | None:
    """``wandb.init`` for this run folder (resuming its W&B run if it has one); None when disabled."""
    mode = cfg.tracking.effective_mode()
    if mode == "disabled":
        return None
    import wandb

    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None  # a resumed run continues its own
    t = cfg.tracking
    run = wandb.init(
        project=t.project,
        entity=t.entity,
        group=t.group,
        tags=list(t.tags) or None,
        name=name,
        id=run_id,
        resume="allow",
        config=cfg.to_flat_dict(),
        dir=str(run_dir),
        mode=mode,
    )
    write_text_atomic(id_file, run.id + "\n")
    return run


def log_summary(run: Any | None, values: Mapping[str, Any]) -> None:
    """Put final numbers (e.g. ``test/policy/accuracy``) in the W&B run summary."""
    if run is not None:
        run.summary.update(dict(values))


def finish_run(run: Any | None, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)
