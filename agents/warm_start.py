"""Warm start: behaviour cloning of a static program before PPO (PoLar and Dr.LLM also train on
search results first).

``agent.warm_start``: a static baseline ``family_k`` (e.g. ``greedy_3``) searched on the train split,
or ``best`` = the most accurate among the bi / skip_rank / greedy programs at the k that fits
``env.max_compute_fraction`` (without a budget: the greedy or skip_rank program at any k, or the full
model, with the highest accuracy - ``env.compute_penalty`` x compute fraction, the static program that
best serves the reward's own trade-off) (every candidate must respect ``env.always_execute``), judged on the eval
split plus the train questions the static search did not use (474 questions on ARC-Easy: the eval
split alone, 110, cannot tell programs 2 points apart).
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

from polar_rl.config import SEARCHED_FAMILIES, Config, ConfigError
from polar_rl.envs.engine import LockstepEngine
from polar_rl.envs.rollout import constant_policy
from polar_rl.program import runs_string
from polar_rl.search.families import StaticBaselines, max_skips
from polar_rl.search.results import cached_program_accuracies


def candidate_names(cfg: Config, found: StaticBaselines) -> list[str]:
    """``family_k`` names a warm start may pick from (``best``) or the one named."""
    name = cfg.agent.warm_start
    assert name is not None
    if name != "best":
        family, _, k = name.rpartition("_")
        if family not in SEARCHED_FAMILIES or not k.isdigit():
            raise ConfigError(f"agent.warm_start: {name!r} is not 'best' or a static program bi_K, skip_rank_K or "
                              f"greedy_K (K = skipped blocks)")
        return [name]
    budget = cfg.env.max_compute_fraction
    top = max_skips(found.num_blocks, cfg.baselines.min_compute)
    if budget is None or budget >= 1:  # no budget: every k, judged by accuracy - lambda x compute
        return ["full"] + [f"{family}_{k}" for k in range(1, top + 1) for family in PENALTY_FAMILIES]
    k = max(1, math.ceil(found.num_blocks * (1 - budget) - 1e-9))
    k = min(k, top)
    return [f"{family}_{k}" for family in ("greedy", "skip_rank", "bi")]


#: families a penalty-chosen warm start (no budget) compares at every k; BI is left out: on the 474 selection
#: questions it scored 0.489 at k = 3 against 0.515 for greedy and skip_rank, and it doubles the cost
PENALTY_FAMILIES = ("greedy", "skip_rank")


def selection_examples(cfg: Config, found: StaticBaselines, train_task: Any, eval_task: Any) -> list[Any]:
    """Questions the warm start compares its candidates on: the eval split plus every train question the
    static search did not use (110 + 364 = 474 on ARC-Easy with the default 96-question search)."""
    from polar_rl.agents.evaluate import load_split

    searched = {ex.id for ex in load_split(cfg, found.split, found.n_examples).examples}
    return list(eval_task.examples) + [ex for ex in train_task.examples if ex.id not in searched]


def choose_program(cfg: Config, found: StaticBaselines, lm: Any, examples: list[Any]) -> tuple[str, list[int], dict]:
    """The warm-start program: its name, run counts, and each candidate's accuracy on ``examples``."""
    names = candidate_names(cfg, found)
    programs = {}
    for name in names:
        if name == "full":
            programs[name] = [1] * found.num_blocks
            continue
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
    if len(programs) == 1:
        name = next(iter(programs))
        return name, programs[name], {}
    distinct = {tuple(r): n for n, r in reversed(list(programs.items()))}  # identical programs run once
    acc = cached_program_accuracies(lm, examples, {n: list(r) for r, n in distinct.items()}, cfg.env.block_size,
                                    dtype=cfg.model.dtype)
    scores = {n: acc[distinct[tuple(r)]] for n, r in programs.items()}
    if "full" in programs:  # no budget: the static program with the best accuracy - lambda x compute
        lam, B = cfg.env.compute_penalty, found.num_blocks
        objective = {n: scores[n] - lam * sum(programs[n]) / B for n in programs}
        best = max(programs, key=lambda n: (objective[n], -names.index(n)))
    else:
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
    examples = selection_examples(cfg, found, train_engine.task, eval_engine.task)
    name, runs, scores = choose_program(cfg, found, train_engine.lm, examples)
    if name == "full":  # no static program pays for its accuracy at this lambda: nothing to clone
        print(f"warm start: none; at lambda {cfg.env.compute_penalty:g} the full model beats every static program "
              f"on {len(examples)} questions by accuracy - lambda x compute")
        return {"program": "full", "runs": runs, "candidates": scores, "selection_questions": len(examples)}
    episodes = cfg.agent.warm_start_episodes or len(train_engine.task)
    obs, masks, actions, returns = collect(train_engine, runs, episodes)
    stats = behaviour_clone(model, obs, masks, actions, returns, cfg.agent.warm_start_epochs,
                            seed=int(cfg.seed or 0))
    program = runs_string(runs)
    print(f"warm start: cloned {name} ({program}) from {len(obs)} decisions; accuracy of the candidates on "
          f"{len(examples)} questions (eval split + train questions the search did not use) "
          f"{ {n: round(s, 3) for n, s in scores.items()} }; actor agreement {stats['bc_agreement']:.3f}")
    return {"program": name, "runs": runs, "candidates": scores, "selection_questions": len(examples), **stats}
