"""Run a policy over every example of a split exactly once, through the lockstep engine.

Every method (full model, static baselines, random programs, a trained policy) is evaluated by this
one loop, so all go through the same scorer and the same compute accounting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polar_rl.envs.engine import LockstepEngine
from polar_rl.tasks.examples import MCExample

#: (observations (N, D), action masks (N, 3), block index) -> actions (N,)
PolicyFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def rollout(
    engine: LockstepEngine,
    policy: PolicyFn,
    examples: Sequence[MCExample] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Returns one terminal info per example (in order) and the wall seconds per example."""
    examples = list(engine.task.examples if examples is None else examples)  # type: ignore[arg-type]
    n = engine.n
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for lo in range(0, len(examples), n):
        chunk = examples[lo : lo + n]
        real = len(chunk)
        chunk = chunk + [examples[j % len(examples)] for j in range(n - real)]  # pad the last chunk
        obs = engine.reset(chunk)
        done, infos = False, []
        while not done:
            actions = policy(obs, engine.action_masks(), engine.ep.block)  # type: ignore[union-attr]
            obs, _, done, infos = engine.step(actions)
        records.extend(infos[:real])
        if progress is not None:
            progress(real)
    seconds = (time.perf_counter() - start) / max(1, len(examples))
    return records, seconds


def rollout_programs(
    engine: LockstepEngine,
    programs: dict[str, Sequence[int]],
    examples: Sequence[MCExample] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Evaluate several static programs (run counts per block) over the same examples.

    Chunk by chunk, every program runs on the same N examples back to back, so the engine's prefix
    cache serves the blocks they share (a prefix computed for one program is a hit for the next).
    Programs with equal run counts are evaluated once. Returns records and seconds per example, per name.
    """
    examples = list(engine.task.examples if examples is None else examples)  # type: ignore[arg-type]
    distinct: dict[tuple[int, ...], list[str]] = {}
    for name, runs in programs.items():
        distinct.setdefault(tuple(int(r) for r in runs), []).append(name)
    order = sorted(distinct, reverse=True)  # neighbours in this order share the longest prefixes
    records: dict[tuple[int, ...], list[dict[str, Any]]] = {r: [] for r in order}
    seconds: dict[tuple[int, ...], float] = dict.fromkeys(order, 0.0)
    n = engine.n
    for lo in range(0, len(examples), n):
        chunk = examples[lo : lo + n]
        for runs in order:
            t0 = time.perf_counter()
            recs, _ = rollout(engine, constant_policy(runs), chunk)
            seconds[runs] += time.perf_counter() - t0
            records[runs].extend(recs)
        if progress is not None:
            progress(len(chunk))
    out_records = {name: records[r] for r, names in distinct.items() for name in names}
    out_seconds = {name: seconds[r] / max(1, len(examples)) for r, names in distinct.items() for name in names}
    return out_records, out_seconds


def constant_policy(runs: Sequence[int]) -> PolicyFn:
    """A fixed program as a policy: block b takes action ``runs[b]`` (0 skip, 1 execute, 2 loop)."""
    table = np.asarray(runs, dtype=int)

    def act(obs: np.ndarray, masks: np.ndarray, block: int) -> np.ndarray:
        return np.full(obs.shape[0], table[block])

    return act


def random_policy(p: Sequence[float], seed: int = 0) -> PolicyFn:
    """Random programs: each block draws SKIP / EXECUTE / LOOP with probabilities ``p`` (within masks)."""
    rng = np.random.default_rng(seed)
    probs = np.asarray(p, dtype=float)

    def act(obs: np.ndarray, masks: np.ndarray, block: int) -> np.ndarray:
        w = masks * probs[None, :]
        w = w / w.sum(axis=1, keepdims=True)
        return np.array([rng.choice(3, p=row) for row in w])

    return act


def action_probs(model: Any, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 3) the policy's action probabilities, with masked actions at 0."""
    import torch

    with torch.no_grad():
        dist = model.policy.get_distribution(torch.as_tensor(obs, device=model.device))
        probs = dist.distribution.probs.cpu().numpy()
    probs = probs * masks
    return probs / probs.sum(axis=1, keepdims=True)


def sb3_policy(model: Any, deterministic: bool = True, skip_threshold: float | None = None) -> PolicyFn:
    """Wrap an SB3 model (MaskablePPO gets the masks; PPO / A2C, which cannot use them, do not).

    ``skip_threshold`` tau: SKIP a block whenever the policy gives SKIP probability >= tau (where
    allowed), else take the likelier of EXECUTE / LOOP. Greedy (argmax) decoding is tau ~ the
    largest other probability; a calibrated tau trades accuracy for compute like a router threshold.
    """
    from sb3_contrib import MaskablePPO

    maskable = isinstance(model, MaskablePPO)
    if skip_threshold is not None:

        def act_threshold(obs: np.ndarray, masks: np.ndarray, block: int) -> np.ndarray:
            probs = action_probs(model, obs, masks)
            rest = probs.copy()
            rest[:, 0] = -1.0
            actions = rest.argmax(axis=1)
            skip = (probs[:, 0] >= skip_threshold) & masks[:, 0]
            actions[skip | ~masks[np.arange(len(actions)), actions]] = 0
            return actions

        return act_threshold

    def act(obs: np.ndarray, masks: np.ndarray, block: int) -> np.ndarray:
        if maskable:
            actions, _ = model.predict(obs, action_masks=masks, deterministic=deterministic)
        else:
            actions, _ = model.predict(obs, deterministic=deterministic)
        return np.asarray(actions)

    return act
