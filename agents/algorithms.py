"""Algorithm registry: ``agent.algo`` name -> SB3 class, and its keyword arguments from the config.

The names and ``module:Class`` targets live in :data:`polar_rl.config.ALGORITHMS` (the RL zoo's
``ALGOS`` idea); this module imports the class only when it is used. Which keyword arguments an
algorithm takes is spelled out once here: PPO and MaskablePPO take minibatch settings, A2C does not.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from polar_rl.config import ALGORITHMS, AgentConfig, Config, ConfigError, EnvConfig

#: algorithms that read ``action_masks()`` (the others would act on masked actions)
MASKABLE: frozenset[str] = frozenset({"maskable_ppo"})


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class registered under ``name``."""
    if name not in ALGORITHMS:
        raise ConfigError(f"agent.algo: unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    module, _, cls = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def masking_settings(env: EnvConfig) -> list[str]:
    """The env settings that make actions masked (empty: every action is always valid)."""
    out = []
    if env.always_execute:
        out.append(f"env.always_execute={env.always_execute}")
    if env.max_compute_fraction is not None:
        out.append(f"env.max_compute_fraction={env.max_compute_fraction}")
    if env.max_loops is not None:
        out.append(f"env.max_loops={env.max_loops}")
    return out


def check_algorithm(cfg: Config) -> None:
    """ConfigError when the algorithm cannot honour the env's action masks."""
    masked = masking_settings(cfg.env)
    if masked and cfg.agent.algo not in MASKABLE:
        raise ConfigError(
            f"agent.algo={cfg.agent.algo!r} cannot use action masks, but {', '.join(masked)} masks actions; "
            f"use agent.algo: {' or '.join(sorted(MASKABLE))}, or remove those settings"
        )


def algorithm_kwargs(agent: AgentConfig) -> dict[str, Any]:
    """Constructor keyword arguments (besides policy, env and seed) from the agent section."""
    extra = dict(agent.kwargs)
    policy_kwargs = {"net_arch": list(agent.net_arch), **(extra.pop("policy_kwargs", None) or {})}
    kwargs: dict[str, Any] = {
        "learning_rate": agent.learning_rate,
        "n_steps": agent.n_steps,
        "gamma": agent.gamma,
        "gae_lambda": agent.gae_lambda,
        "ent_coef": agent.ent_coef,
        "policy_kwargs": policy_kwargs,
        "device": "cpu",  # a small MLP: the GPU (if any) is the LLM's
        "verbose": 0,
    }
    if agent.uses_minibatches:
        kwargs.update(batch_size=agent.batch_size, n_epochs=agent.n_epochs)
    kwargs.update(extra)
    return kwargs


def make_algorithm(cfg: Config, env: VecEnv, seed: int) -> BaseAlgorithm:
    """A fresh algorithm for ``env`` built from ``cfg.agent``."""
    check_algorithm(cfg)
    cls = algorithm_class(cfg.agent.algo)
    try:
        model = cls("MlpPolicy", env, seed=seed, **algorithm_kwargs(cfg.agent))
    except (TypeError, ValueError, AssertionError) as e:  # an agent.kwargs key or value it does not take
        raise ConfigError(f"agent.kwargs: {cls.__name__} rejected the arguments {dict(cfg.agent.kwargs)}: "
                          f"{e or type(e).__name__}") from None
    if cfg.agent.init_action_probs is not None:
        set_initial_action_probs(model, cfg.agent.init_action_probs)
    return model


def set_initial_action_probs(model: BaseAlgorithm, probs: Sequence[float]) -> None:
    """Start the policy at given action probabilities whatever the observation.

    SB3 initialises the action head with gain 0.01, so its logits are ~0 and the bias sets the
    initial distribution; scaling the weights further keeps the start state-independent. Starting
    near EXECUTE explores programs close to the full model instead of uniformly random ones.
    """
    import torch

    head = model.policy.action_net  # type: ignore[union-attr]
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.copy_(torch.log(torch.tensor(list(probs), dtype=head.bias.dtype)))


class DamagedModelError(ConfigError):
    """A model zip that cannot be loaded (truncated, not a zip, wrong contents)."""


#: what SB3 raises on a damaged zip (truncated, garbage, a member that does not unpickle)
_DAMAGED = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, IndexError, AssertionError,
            pickle.UnpicklingError, zipfile.BadZipFile)


def load_algorithm(name: str, path: Path, env: VecEnv | None = None) -> BaseAlgorithm:
    """Load a saved model of algorithm ``name`` (optimizer state and ``num_timesteps`` included);
    a damaged file is one DamagedModelError naming it."""
    cls = algorithm_class(name)
    try:
        return cls.load(path, env=env, device="cpu")
    except _DAMAGED as e:
        raise DamagedModelError(f"cannot load the model {path}: damaged or not a {cls.__name__} zip "
                                f"({type(e).__name__}: {e})") from None


def actor_network(model: BaseAlgorithm) -> Any:
    """The modules a deterministic action needs (policy MLP + action head), for FLOPs accounting."""
    import torch

    policy = model.policy
    parts = [getattr(policy.mlp_extractor, "policy_net", None), getattr(policy, "action_net", None)]
    return torch.nn.ModuleList([p for p in parts if p is not None])
