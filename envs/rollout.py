"""Episode loops of the evaluation: a policy, or fixed programs, over every example once.

:func:`rollout` runs one policy (an SB3 model through :func:`sb3_policy`) over a split through the
lockstep engine: the eval callback during training, the skip-threshold calibration and the parity
tests use it. :func:`rollout_programs` runs fixed programs (actions per block, through
:func:`constant_policy`) and, optionally, policies first in each chunk, sharing the engine's prefix
cache and reusing records already known: the evaluation's policy and static rows come from it.
Both take the examples in chunks of similar length (:func:`length_chunks`) and go through the
engine's scorer and compute accounting. Not here: the full model's row of an evaluation (the engine's
reference results), the static search and the warm start's choice of program (they score programs
with :mod:`polar_rl.search.runner`, without observations), and the warm start's behaviour-cloning
episodes (``polar_rl.agents.warm_start.collect``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polar_rl.envs.engine import LockstepEngine
from polar_rl.tasks.examples import MCExample
from polar_rl.tasks.multiple_choice import packed_lengths

#: (observations (N, D), action masks (N, 3), block index) -> actions (N,)
PolicyFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def length_chunks(engine: LockstepEngine, examples: Sequence[MCExample]) -> list[list[int]]:
    """Indices of ``examples``, longest packed row first, in chunks of ``engine.n``.

    Rows of similar length share a chunk, so its length buckets are few and nearly unpadded (ARC rows
    vary 24..130 tokens; in task order a chunk of 16 pads ~15 % more tokens)."""
    lengths = packed_lengths(engine.lm.tokenizer, examples)
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], i))
    return [order[lo : lo + engine.n] for lo in range(0, len(order), engine.n)]


def run_chunk(engine: LockstepEngine, policy: PolicyFn, examples: Sequence[MCExample]) -> list[dict[str, Any]]:
    """One set of episodes over ``examples`` (at most ``engine.n``; the rest are idle rows): their terminal infos."""
    obs = engine.reset(list(examples))
    done, infos = False, []
    while not done:
        actions = policy(obs, engine.action_masks(), engine.ep.block)  # type: ignore[union-attr]
        obs, _, done, infos = engine.step(actions)
    return infos[: len(examples)]


def rollout(
    engine: LockstepEngine,
    policy: PolicyFn,
    examples: Sequence[MCExample] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Returns one terminal info per example (in the order given) and the wall seconds per example.

    Examples run in chunks of similar length (:func:`length_chunks`)."""
    examples = list(engine.task.examples if examples is None else examples)  # type: ignore[arg-type]
    records: list[dict[str, Any]] = [{} for _ in examples]
    start = time.perf_counter()
    for chunk in length_chunks(engine, examples):
        for i, info in zip(chunk, run_chunk(engine, policy, [examples[i] for i in chunk]), strict=True):
            records[i] = info
        if progress is not None:
            progress(len(chunk))
    seconds = (time.perf_counter() - start) / max(1, len(examples))
    return records, seconds


#: records already computed, by (example id, actions per block): a deterministic program's result
Known = dict[tuple[str, tuple[int, ...]], dict[str, Any]]


def program_actions(runs: Sequence[int]) -> tuple[int, ...]:
    """Run counts per block (a record's ``runs``) as actions: 0 skip, 1 execute, 2 loop (any count >= 2)."""
    return tuple(min(int(r), 2) for r in runs)


def rollout_programs(
    engine: LockstepEngine,
    programs: dict[str, Sequence[int]],
    examples: Sequence[MCExample] | None = None,
    progress: Callable[[int], None] | None = None,
    known: Known | None = None,
    policies: dict[str, tuple[LockstepEngine, PolicyFn]] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Evaluate several static programs (actions per block) over the same examples.

    Chunk by chunk, every program runs on the same examples back to back, so the engine's prefix
    cache serves the blocks they share (a prefix computed for one program is a hit for the next).
    ``policies`` (name -> an engine sharing that cache, and a policy) run first in each chunk.
    Programs with equal actions are evaluated once, and an example whose record for a program is
    known (in ``known``, or a policy in this chunk chose that program for it) is not run again.
    Returns records and the wall seconds spent per example, per name.
    """
    examples = list(engine.task.examples if examples is None else examples)  # type: ignore[arg-type]
    known = {} if known is None else dict(known)
    policies = policies or {}
    distinct: dict[tuple[int, ...], list[str]] = {}
    for name, runs in programs.items():
        distinct.setdefault(tuple(int(r) for r in runs), []).append(name)
    order = sorted(distinct, reverse=True)  # neighbours in this order share the longest prefixes
    keys: list[Any] = [*policies, *order]
    records: dict[Any, list[dict[str, Any]]] = {key: [{} for _ in examples] for key in keys}
    seconds: dict[Any, float] = dict.fromkeys(keys, 0.0)
    for chunk in length_chunks(engine, examples):
        for name, (policy_engine, policy) in policies.items():
            t0 = time.perf_counter()
            infos = run_chunk(policy_engine, policy, [examples[i] for i in chunk])
            seconds[name] += time.perf_counter() - t0
            for i, info in zip(chunk, infos, strict=True):
                records[name][i] = info
                known.setdefault((info["example_id"], program_actions(info["runs"])), info)
        for runs in order:
            todo = []
            for i in chunk:
                hit = known.get((examples[i].id, runs))
                if hit is None:
                    todo.append(i)
                else:
                    records[runs][i] = dict(hit)
            if todo:
                t0 = time.perf_counter()
                infos = run_chunk(engine, constant_policy(runs), [examples[i] for i in todo])
                seconds[runs] += time.perf_counter() - t0
                for i, info in zip(todo, infos, strict=True):
                    records[runs][i] = info
        if progress is not None:
            progress(len(chunk))
    n = max(1, len(examples))
    out_records = {name: records[name] for name in policies}
    out_seconds = {name: seconds[name] / n for name in policies}
    for runs, names in distinct.items():
        out_records.update({name: records[runs] for name in names})
        out_seconds.update({name: seconds[runs] / n for name in names})
    return out_records, out_seconds


def constant_policy(runs: Sequence[int]) -> PolicyFn:
    """A fixed program as a policy: block b takes action ``runs[b]`` (0 skip, 1 execute, 2 loop)."""
    table = np.asarray(runs, dtype=int)

    def act(obs: np.ndarray, masks: np.ndarray, block: int) -> np.ndarray:
        return np.full(obs.shape[0], table[block])

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
