"""SB3 callbacks: evaluation on the eval split, episode metrics, checkpoints with RNG states.

Everything beyond SB3's own training loop happens here. Metrics go through ``self.logger.record``
so they reach every logger output (stdout, ``metrics.jsonl``, W&B). Stable keys:

* ``eval/accuracy``, ``eval/layer_calls``, ``eval/compute_fraction``, ``eval/correction_rate``,
  ``eval/retention_rate``, ``eval/full_accuracy``, ``eval/seconds_per_example`` and
  ``eval/score`` = accuracy - ``training.score_penalty`` x compute_fraction (default 0.1: 10 % of
  compute is worth one accuracy point; :func:`polar_rl.metrics.score`), the sweep target. It is
  deliberately not the reward's lambda, which is in reward units (nats of margin for the margin
  rewards): one fixed scale lets runs with different lambdas be compared.
* ``rollout/correct_rate``, ``rollout/compute_fraction``, ``rollout/nonfinite`` (fraction of
  episodes of the rollout that hit a non-finite state), ``rollout/prefix_cache_hit_rate``.
"""

from __future__ import annotations

import base64
import json
import random
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from polar_rl.agents.run_dir import checkpoint_paths
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import rollout, sb3_policy
from polar_rl.fileio import atomic_open, write_json_atomic
from polar_rl.metrics import method_summary, score

#: beside best_model.zip: which metric, its value and the step (a resume reads the best so far from it)
BEST_INFO = "best_model.json"
#: the keys ProgramEvalCallback logs (``training.best_metric`` must be one of them)
EVAL_KEYS: tuple[str, ...] = (
    "eval/accuracy",
    "eval/layer_calls",
    "eval/compute_fraction",
    "eval/correction_rate",
    "eval/retention_rate",
    "eval/score",
    "eval/full_accuracy",
    "eval/seconds_per_example",
)


def save_model_atomic(model: Any, path: Path) -> None:
    """``model.save`` into a uniquely named temp file next to ``path``, fsync, then rename: never a
    half-written zip, and two writers never share a temp file."""
    with atomic_open(path, "wb") as f:
        model.save(f)


def _crossed(now: int, last: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (last, now]."""
    return now // every > last // every


class ProgramEvalCallback(BaseCallback):
    """Every ``eval_freq`` env steps: run the current policy (deterministic) over the eval split.

    Logs the ``eval/`` keys, dumps the logger at the current step, and saves ``best_model.zip`` in
    ``run_dir`` when ``best_metric`` improves on ``best`` (pass the best value of an earlier,
    resumed part of the run).
    """

    def __init__(
        self,
        eval_engine: LockstepEngine,
        eval_freq: int,
        score_penalty: float,
        best_metric: str,
        run_dir: Path,
        best: float = -np.inf,
        min_delta: float = 0.0,
        verbose: int = 0,
        eval_at_start: bool = False,
    ) -> None:
        super().__init__(verbose)
        self.eval_at_start = eval_at_start  # a warm-started policy is a candidate for best_model.zip too
        if best_metric not in EVAL_KEYS:
            raise ValueError(f"best_metric {best_metric!r} is not logged by evaluation; use one of {EVAL_KEYS}")
        self.eval_engine, self.eval_freq = eval_engine, eval_freq
        self.score_penalty, self.best_metric = score_penalty, best_metric
        self.run_dir, self.best = Path(run_dir), best
        self.min_delta = min_delta
        self.last_metrics: dict[str, float] = {}
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps
        if self.eval_at_start and self.num_timesteps == 0:
            self.evaluate()

    def _on_step(self) -> bool:
        if _crossed(self.num_timesteps, self._last, self.eval_freq):
            self._last = self.num_timesteps
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, float]:
        records, seconds = rollout(self.eval_engine, sb3_policy(self.model, deterministic=True))
        s = method_summary(
            [r["correct"] for r in records], [r["layer_calls"] for r in records],
            self.eval_engine.lm.num_layers, [r["full_correct"] for r in records],
            seconds_per_example=seconds,
        )
        metrics = {
            "eval/accuracy": s["accuracy"],
            "eval/layer_calls": s["layer_calls"],
            "eval/compute_fraction": s["compute_fraction"],
            "eval/correction_rate": s["correction_rate"],
            "eval/retention_rate": s["retention_rate"],
            "eval/score": score(s["accuracy"], s["compute_fraction"], self.score_penalty),
            "eval/full_accuracy": float(np.mean([r["full_correct"] for r in records])),
            "eval/seconds_per_example": seconds,
        }
        for key, value in metrics.items():
            self.logger.record(key, value)
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        if metrics[self.best_metric] > self.best + self.min_delta:
            self.best = metrics[self.best_metric]
            save_model_atomic(self.model, self.run_dir / "best_model.zip")
            write_json_atomic(self.run_dir / BEST_INFO, {"metric": self.best_metric, "value": self.best,
                                                         "step": int(self.num_timesteps)})
            if self.verbose:
                print(f"new best {self.best_metric} = {self.best:.4f} at {self.num_timesteps} steps")
        self.last_metrics = metrics
        return metrics


class EpisodeMetricsCallback(BaseCallback):
    """Per rollout: correct rate, compute fraction and non-finite rate of the finished episodes,
    and the prefix-cache hit rate of the rollout's lookups."""

    def __init__(self, engine: LockstepEngine, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.engine = engine
        self._episodes: list[dict[str, Any]] = []
        self._cache_seen = (0, 0)

    def _cache_counts(self) -> tuple[int, int]:
        cache = self.engine.cache
        return (0, 0) if cache is None else (int(cache.hits), int(cache.misses))

    def _on_rollout_start(self) -> None:
        self._episodes = []
        self._cache_seen = self._cache_counts()

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done and "correct" in info:
                self._episodes.append(info)
        return True

    def _on_rollout_end(self) -> None:
        eps = self._episodes
        if eps:
            self.logger.record("rollout/correct_rate", float(np.mean([e["correct"] for e in eps])))
            self.logger.record("rollout/compute_fraction", float(np.mean([e["compute_fraction"] for e in eps])))
            self.logger.record("rollout/nonfinite", float(np.mean([e["nonfinite"] for e in eps])))
        hits, misses = self._cache_counts()
        lookups = (hits - self._cache_seen[0]) + (misses - self._cache_seen[1])
        if self.engine.cache is not None and lookups:
            self.logger.record("rollout/prefix_cache_hit_rate", (hits - self._cache_seen[0]) / lookups)

    def _on_training_end(self) -> None:
        # SB3 dumps a rollout's logs before training on it; flush the last update's train/ values
        self.logger.dump(self.num_timesteps)


# ---- checkpoints with RNG state (plain JSON: a run folder is data, never code) ---------------


#: the model's buffers the state file holds
EPISODE_BUFFERS = ("ep_info_buffer", "ep_success_buffer")
#: key of the RNG file: digest of the train split the saved example order indexes into
TRAIN_EXAMPLES = "train_examples"
#: numpy dtype kinds a state file may hold: bool, signed and unsigned ints, floats
_KINDS = frozenset("biuf")


def capture_rng(engine: LockstepEngine) -> dict[str, Any]:
    """Every random state a resumed run needs: python, numpy, torch (+ CUDA), the engine's order."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "engine_sampler": engine.sampler_state(),
    }


def restore_rng(state: dict[str, Any], engine: LockstepEngine) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    engine.load_sampler_state(state["engine_sampler"])


def capture_buffers(model: Any) -> dict[str, Any]:
    """The episode-info buffers (``rollout/ep_rew_mean`` ...): SB3 pickles them into the zip, which
    :func:`polar_rl.agents.algorithms.load_algorithm` never unpickles, so the state file keeps them."""
    return {key: list(getattr(model, key) or ()) for key in EPISODE_BUFFERS}


def restore_buffers(state: dict[str, Any], model: Any) -> None:
    """Put :func:`capture_buffers`' lists back (ValueError when they are not episode records)."""
    infos, successes = state.get(EPISODE_BUFFERS[0]) or [], state.get(EPISODE_BUFFERS[1]) or []
    if not all(isinstance(i, dict) and {"r", "l"} <= set(i) for i in infos) or not isinstance(successes, list):
        raise ValueError("the episode buffers of the state file are not lists of episode records")
    model.ep_info_buffer = deque(infos, maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(successes, maxlen=model._stats_window_size)


def state_to_json(value: Any) -> Any:
    """Plain JSON for RNG states and buffers. Tuples, numpy arrays and scalars and tensors are tagged
    (``{"$tuple": [...]}``, ``{"$ndarray": [...], "dtype": "<u4", "shape": [624]}``, ...) so that
    :func:`state_from_json` gives them back exactly, with their types."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
        return {"$tensor": base64.b64encode(arr.tobytes()).decode(), "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return {"$scalar": value.item(), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"$tuple": [state_to_json(v) for v in value]}
    if isinstance(value, list):
        return [state_to_json(v) for v in value]
    if isinstance(value, dict):
        if any(not isinstance(k, str) or k.startswith("$") for k in value):
            raise TypeError(f"state keys must be strings not starting with '$': {sorted(map(str, value))[:5]}")
        return {k: state_to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint state file")


def _dtype(name: Any) -> np.dtype:
    dtype = np.dtype(str(name))
    if dtype.kind not in _KINDS:
        raise ValueError(f"dtype {str(name)[:40]!r} is not a bool, int or float dtype")
    return dtype


def state_from_json(value: Any) -> Any:
    """The inverse of :func:`state_to_json`; ValueError / TypeError / KeyError on anything else."""
    if isinstance(value, list):
        return [state_from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k.startswith("$")]
    if not tags:
        return {k: state_from_json(v) for k, v in value.items()}
    tag = tags[0]
    if tag == "$tuple":
        return tuple(state_from_json(v) for v in value[tag])
    if tag not in ("$scalar", "$ndarray", "$tensor"):
        raise ValueError(f"unknown tag {tag[:40]!r}")
    dtype = _dtype(value["dtype"])
    if tag == "$scalar":
        return dtype.type(value[tag])
    if tag == "$ndarray":
        return np.array(value[tag], dtype=dtype).reshape(value["shape"])
    raw = base64.b64decode(str(value[tag]), validate=True)
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(value["shape"]).copy())


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint state file (JSON, atomically)."""
    with atomic_open(path) as f:
        json.dump(state_to_json(state), f)
        f.write("\n")


def load_rng(path: Path) -> dict[str, Any]:
    """A checkpoint state file as written by :func:`save_state`. It is parsed as JSON and decoded as
    data only; a file that is not one is a ValueError (or TypeError / KeyError) naming nothing run."""
    state = state_from_json(json.loads(path.read_bytes()))
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds a {type(state).__name__}, not a mapping")
    return state


class CheckpointWithRngCallback(BaseCallback):
    """Every ``save_freq`` env steps, after the policy update: model zip + RNG states.

    Files follow SB3's ``CheckpointCallback`` names (``rl_model_<steps>_steps.zip``) and add
    ``rl_model_rng_<steps>_steps.json`` (RNG states and episode buffers, plain JSON). Both are written
    atomically and fsynced, zip first, so the RNG file marks a complete checkpoint. Saving at rollout
    start means the saved policy includes the last update and a resume restarts cleanly at a rollout
    boundary.
    """

    def __init__(self, run_dir: Path, save_freq: int, engine: LockstepEngine, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.run_dir, self.save_freq, self.engine = Path(run_dir), save_freq, engine
        self._last = 0
        self._digest: str | None = None
        self.saved: list[int] = []

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if _crossed(self.num_timesteps, self._last, self.save_freq):
            self._last = self.num_timesteps
            self.save()

    def save(self) -> Path:
        from polar_rl.search.results import examples_digest

        zip_path, rng_path = checkpoint_paths(self.run_dir, self.num_timesteps)
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        save_model_atomic(self.model, zip_path)
        if self._digest is None:  # what the sampler's order indexes into: a resume checks it is unchanged
            self._digest = examples_digest(self.engine.task.examples)  # type: ignore[arg-type]
        state = {**capture_rng(self.engine), **capture_buffers(self.model), TRAIN_EXAMPLES: self._digest}
        save_state(rng_path, state)
        self.saved.append(self.num_timesteps)
        if self.verbose:
            print(f"checkpoint {zip_path}")
        return zip_path
