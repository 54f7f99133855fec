"""Warm start: behaviour cloning of a static program before PPO (PoLar and Dr.LLM also train on
search results first).

``agent.warm_start``: a static baseline ``family_k`` (e.g. ``greedy_3``) searched on the train split,
or ``best`` = the most accurate on the eval split among the bi / skip_rank / greedy programs at the
k that fits ``env.max_compute_fraction`` (every candidate must respect ``env.always_execute``).
The static program is rolled over the train questions; the actor learns its action at every block
from the same observations the environment gives PPO (cross-entropy through ``evaluate_actions``,
with the action masks); the critic learns the rollout's return. PPO then starts from a policy that
already skips, and can only move away from it where the reward says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from polar_rl.agents.baselines import StaticBaselines, max_skips
from polar_rl.config import Config, ConfigError
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import constant_policy, rollout_programs
from polar_rl.program import runs_string


def candidate_names(cfg: Config, found: StaticBaselines) -> list[str]:
    """``family_k`` names a warm start may pick from (``best``) or the one named."""
    name = cfg.agent.warm_start
    assert name is not None
    if name != "best":
        family, _, k = name.rpartition("_")
        if family not in ("bi", "skip_rank", "greedy") or not k.isdigit():
            raise ConfigError(f"agent.warm_start: {name!r} is not 'best' or a static program bi_K, skip_rank_K or "
                              f"greedy_K (K = skipped blocks)")
        return [name]
    budget = cfg.env.max_compute_fraction
    if budget is None or budget >= 1:
        raise ConfigError("agent.warm_start='best' picks the static program that fits env.max_compute_fraction; "
                          "set a budget < 1 or name a program (e.g. greedy_3)")
    k = max(1, math.ceil(found.num_blocks * (1 - budget) - 1e-9))
    k = min(k, max_skips(found.num_blocks, cfg.baselines.min_compute))
    return [f"{family}_{k}" for family in ("greedy", "skip_rank", "bi")]


def choose_program(cfg: Config, found: StaticBaselines, eval_engine: LockstepEngine) -> tuple[str, list[int], dict]:
    """The warm-start program: run counts, its name, and each candidate's eval-split accuracy."""
    names = candidate_names(cfg, found)
    programs = {}
    for name in names:
        family, _, k = name.rpartition("_")
        try:
            runs = found.runs(family, int(k))
        except ValueError as e:
            raise ConfigError(f"agent.warm_start: {e}") from None
        bad = [b for b in cfg.env.always_execute if runs[b] == 0]
        if not bad:
            programs[name] = runs
        elif len(names) == 1:
            raise ConfigError(f"agent.warm_start: {name} skips blocks {bad}, which env.always_execute forbids")
    if not programs:
        raise ConfigError(f"agent.warm_start: every candidate ({', '.join(names)}) skips a block in env.always_execute")
    from polar_rl.agents.evaluate import static_env

    engine = LockstepEngine(eval_engine.lm, eval_engine.task, static_env(eval_engine.cfg), eval_engine.n, shuffle=False,
                            reference=eval_engine.reference)
    records, _ = rollout_programs(engine, programs)
    scores = {n: float(np.mean([r["correct"] for r in recs])) for n, recs in records.items()}
    best = max(programs, key=lambda n: (scores[n], -names.index(n)))
    return best, programs[best], scores


def collect(engine: LockstepEngine, runs: list[int], episodes: int) -> tuple[np.ndarray, ...]:
    """Observations, masks, actions and returns of ``runs`` over ``episodes`` train episodes."""
    policy = constant_policy(runs)
    obs_all, mask_all, act_all, ret_all = [], [], [], []
    for _ in range(max(1, episodes // engine.n)):
        obs = engine.reset()
        steps_obs, steps_mask, steps_act, rewards = [], [], [], []
        done = False
        while not done:
            masks = engine.action_masks()
            actions = policy(obs, masks, engine.ep.block)  # type: ignore[union-attr]
            steps_obs.append(obs)
            steps_mask.append(masks)
            steps_act.append(actions)
            obs, reward, done, _ = engine.step(actions)
            rewards.append(reward)
        returns = np.cumsum(np.asarray(rewards)[::-1], axis=0)[::-1]  # (T, N) return-to-go, gamma 1
        obs_all.append(np.stack(steps_obs))
        mask_all.append(np.stack(steps_mask))
        act_all.append(np.stack(steps_act))
        ret_all.append(returns)
    flat = [np.concatenate([x.reshape(-1, *x.shape[2:]) for x in xs]) for xs in (obs_all, mask_all, act_all, ret_all)]
    return tuple(flat)


def behaviour_clone(model: Any, obs: np.ndarray, masks: np.ndarray, actions: np.ndarray, returns: np.ndarray,
                    epochs: int, batch_size: int = 256, seed: int = 0, min_updates: int = 300,
                    lr: float = 1e-3) -> dict[str, float]:
    """Fit the actor to ``actions`` (cross-entropy) and the critic to ``returns`` (MSE), with its own Adam
    (``lr``) for ``epochs`` passes and at least ``min_updates`` minibatch updates (small data sets)."""
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    policy.set_training_mode(True)
    rng = np.random.default_rng(seed)
    o = torch.as_tensor(obs, dtype=torch.float32)
    m = torch.as_tensor(masks, dtype=torch.bool)
    a = torch.as_tensor(actions, dtype=torch.long)
    r = torch.as_tensor(returns, dtype=torch.float32)
    maskable = "action_masks" in policy.evaluate_actions.__code__.co_varnames
    per_epoch = max(1, len(o) // batch_size)
    for _ in range(max(epochs, -(-min_updates // per_epoch))):
        for idx in np.array_split(rng.permutation(len(o)), per_epoch):
            i = torch.as_tensor(idx)
            kwargs = {"action_masks": m[i].numpy()} if maskable else {}
            values, log_prob, _ = policy.evaluate_actions(o[i], a[i], **kwargs)
            loss = -log_prob.mean() + 0.5 * torch.nn.functional.mse_loss(values.flatten(), r[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        kwargs = {"action_masks": m.numpy()} if maskable else {}
        dist = policy.get_distribution(o, **kwargs) if maskable else policy.get_distribution(o)
        agree = float((dist.distribution.probs.argmax(-1) == a).float().mean())
        _, log_prob, _ = policy.evaluate_actions(o, a, **kwargs)
    return {"bc_agreement": agree, "bc_nll": float(-log_prob.mean())}


def warm_start(model: Any, cfg: Config, found: StaticBaselines, train_engine: LockstepEngine,
               eval_engine: LockstepEngine) -> dict[str, Any]:
    """Pick the program, clone it into ``model`` in place, and say what happened."""
    name, runs, scores = choose_program(cfg, found, eval_engine)
    episodes = cfg.agent.warm_start_episodes or len(train_engine.task)
    obs, masks, actions, returns = collect(train_engine, runs, episodes)
    stats = behaviour_clone(model, obs, masks, actions, returns, cfg.agent.warm_start_epochs,
                            seed=int(cfg.seed or 0))
    program = runs_string(runs)
    print(f"warm start: cloned {name} ({program}) from {len(obs)} decisions; eval accuracy of the candidates "
          f"{ {n: round(s, 3) for n, s in scores.items()} }; actor agreement {stats['bc_agreement']:.3f}")
    return {"program": name, "runs": runs, "candidates": scores, **stats}
