"""Disk cache of the full model's result per example, so each split is run in full only once.

``$POLAR_RL_CACHE/reference/<model_hash>__<task>__<split>.json`` maps example id ->
``{"correct": bool, "margin": float, "gold_logprob": float}`` (a file missing a field is recomputed). Load it into the ``reference`` dict an engine is given (the
engine fills in examples it has not seen), and save the dict back after the run. Results depend on
the weights' dtype, so non-float32 runs get their own file (``<model_hash>-<dtype>__...``).
"""

from __future__ import annotations

import json
from pathlib import Path

from polar_rl.agents.run_dir import slug, write_json_atomic
from polar_rl.envs.engine import Reference
from polar_rl.models.loading import cache_root


class ReferenceStore:
    """The cached full-model results of one (model, dtype, task, split)."""

    def __init__(self, model_hash: str, task: str, split: str, dtype: str = "float32", root: Path | None = None):
        model_key = model_hash if dtype == "float32" else f"{model_hash}-{dtype}"
        folder = (root if root is not None else cache_root()) / "reference"
        self.path = folder / f"{model_key}__{slug(task)}__{slug(split)}.json"
        self.meta_path = folder / f"{model_key}__{slug(task)}__{slug(split)}.meta.json"

    def load(self) -> dict[str, Reference]:
        """The cached results (empty when there is no file or it cannot be read)."""
        if not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {k: Reference(bool(v["correct"]), float(v["margin"]), float(v["gold_logprob"]))
                    for k, v in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"warning: ignoring unreadable reference cache {self.path}: {e}")
            return {}

    def save(self, reference: dict[str, Reference]) -> None:
        """Merge ``reference`` into the file (atomically; entries of other runs are kept)."""
        merged = {**self.load(), **reference}
        data = {k: {"correct": v.correct, "margin": v.margin, "gold_logprob": v.gold_logprob}
                for k, v in sorted(merged.items())}
        write_json_atomic(self.path, data)

    def load_seconds(self) -> float | None:
        """Wall seconds per example of the full model's last measured pass on this split, if cached."""
        try:
            value = json.loads(self.meta_path.read_text())["seconds_per_example"]
            return float(value) if value is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_seconds(self, seconds: float) -> None:
        write_json_atomic(self.meta_path, {"seconds_per_example": seconds})
