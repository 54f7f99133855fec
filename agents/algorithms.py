"""Algorithm registry: ``agent.algo`` name -> SB3 class, and its keyword arguments from the config.

The names and ``module:Class`` targets live in :data:`polar_rl.config.ALGORITHMS` (the RL zoo's
``ALGOS`` idea); this module imports the class only when it is used. Which keyword arguments an
algorithm takes is spelled out once here: PPO and MaskablePPO take minibatch settings, A2C does not.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import json
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from polar_rl.config import ALGORITHMS, AgentConfig, Config, ConfigError, EnvConfig

if TYPE_CHECKING:
    from polar_rl.models.adapter import LayerModel

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


class ForeignModelError(DamagedModelError):
    """A model zip that is not a policy of this run's kind: another algorithm, network or observation shape."""


#: what SB3 raises on a damaged zip (truncated, garbage, a member that does not unpickle)
_DAMAGED = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, IndexError, AssertionError,
            pickle.UnpicklingError, zipfile.BadZipFile)
#: the largest ``data`` member read (SB3's JSON of a small MLP's settings is a few kB)
_MAX_DATA_BYTES = 64 << 20
#: saved keys an algorithm's own attributes lack before its model is set up
_SETUP_KEYS = frozenset({"observation_space", "action_space", "lr_schedule", "n_envs"})


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _damaged(path: Path, cls: type, e: BaseException) -> DamagedModelError:
    return DamagedModelError(f"cannot load the model {path}: damaged or not a {cls.__name__} zip "
                             f"({type(e).__name__}: {_one_line(e)})")


def policy_spaces(lm: LayerModel, env: EnvConfig) -> tuple[Any, Any]:
    """The observation and action spaces of a policy for ``lm`` under ``env``, built as the envs build them."""
    import gymnasium as gym
    import numpy as np

    from polar_rl.masks import NUM_ACTIONS
    from polar_rl.observation import ObservationSpec
    from polar_rl.program import check_block_size

    try:
        num_blocks = check_block_size(lm.num_layers, env.block_size)
    except ValueError as e:
        raise ConfigError(f"env.block_size={env.block_size}: {e}") from None
    spec = ObservationSpec(lm.hidden_size, num_blocks, env.obs_pooled, env.obs_logit_lens)
    return gym.spaces.Box(-spec.clip, spec.clip, shape=(spec.dim,), dtype=np.float32), gym.spaces.Discrete(NUM_ACTIONS)


def read_model_data(path: Path, cls: type) -> tuple[bytes, dict[str, Any]]:
    """The zip's bytes (read once: what is checked is what loads) and its ``data`` member as plain
    JSON; pickled entries stay ``{":serialized:": ...}`` dicts, never unpickled."""
    try:
        raw = Path(path).read_bytes()
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            if archive.getinfo("data").file_size > _MAX_DATA_BYTES:
                raise ValueError(f"its data member is over {_MAX_DATA_BYTES >> 20} MiB")
            data = json.loads(archive.read("data"))
        if not isinstance(data, dict):
            raise ValueError("its data member is not a JSON object")
    except (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile) as e:
        raise _damaged(path, cls, e) from None
    return raw, data


def _pickled(value: Any) -> bool:
    return isinstance(value, dict) and ":serialized:" in value


def _skeleton(cls: type[BaseAlgorithm], cfg: Config) -> BaseAlgorithm:
    """The algorithm built from ``cfg`` without env or networks: its attributes are the saved keys."""
    try:
        model = cls("MlpPolicy", None, _init_setup_model=False, **algorithm_kwargs(cfg.agent))  # type: ignore[call-arg]
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"agent.kwargs: {cls.__name__} rejected the arguments {dict(cfg.agent.kwargs)}: "
                          f"{_one_line(e)}") from None
    model._setup_lr_schedule()
    return model


def _algorithm_mismatch(data: dict[str, Any], skeleton: BaseAlgorithm) -> str | None:
    """Why ``data`` was not saved by the skeleton's algorithm with its network (None: it was)."""
    saved = set(skeleton.__dict__) - set(skeleton._excluded_save_params()) | _SETUP_KEYS
    taken = set(inspect.signature(type(skeleton).__init__).parameters) & saved  # its constructor's settings
    extra, missing = sorted(set(data) - saved), sorted(taken - set(data))
    name = type(skeleton).__name__
    if extra:
        return f"it holds {', '.join(extra[:5])}, which {name} does not save"
    if missing:
        return f"it lacks {', '.join(missing[:5])}, which {name} saves"
    entry, want = data.get("policy_class"), skeleton.policy_class
    if isinstance(entry, dict) and entry.get("__module__") != want.__module__:
        return f"its policy comes from {str(entry.get('__module__'))[:80]}, not {want.__module__}.{want.__name__}"
    kwargs = data.get("policy_kwargs")
    net = kwargs.get("net_arch") if isinstance(kwargs, dict) else None  # plain even beside a pickled dict
    if net is not None and net != skeleton.policy_kwargs.get("net_arch"):
        return f"its net_arch {str(net)[:80]} is not agent.net_arch {skeleton.policy_kwargs.get('net_arch')}"
    return None


def _space_mismatch(data: dict[str, Any], obs_space: Any, action_space: Any) -> str | None:
    """Why the spaces recorded in ``data`` (their plain JSON fields) are not ``obs_space`` / ``action_space``."""
    obs, act = data.get("observation_space"), data.get("action_space")
    if not isinstance(obs, dict):
        return "it records no observation space"
    shape, dtype = obs.get("_shape"), obs.get("dtype")
    if not isinstance(shape, list) or shape != list(obs_space.shape) or dtype != str(obs_space.dtype):
        shown = tuple(shape) if isinstance(shape, list) else shape
        return f"its policy takes observations of shape {str(shown)[:80]} ({str(dtype)[:20]})"
    n = act.get("n") if isinstance(act, dict) else None
    if str(n) != str(action_space.n):
        return f"its policy has {str(n)[:20]} actions"
    return None


def _custom_objects(data: dict[str, Any], skeleton: BaseAlgorithm, cfg: Config, spaces: tuple[Any, Any],
                    env: VecEnv | None) -> dict[str, Any]:
    """A replacement for every pickled entry of ``data`` (SB3 unpickles the others), rebuilt from
    ``cfg``; the entries that size or locate things are replaced even when stored as plain JSON."""
    rebuilt: dict[str, Any] = {
        "policy_class": skeleton.policy_class,
        "policy_kwargs": copy.deepcopy(skeleton.policy_kwargs),
        "observation_space": spaces[0],
        "action_space": spaces[1],
        "n_envs": env.num_envs if env is not None else 1,
        "n_steps": cfg.agent.n_steps,
        "env": None,  # SB3 would make an env of that name
        "_last_obs": None, "_last_episode_starts": None, "_last_original_obs": None,  # a reset starts afresh
        "ep_info_buffer": None, "ep_success_buffer": None,  # logging only; a resume restores them from JSON
    }
    objects = {key: value for key, value in rebuilt.items() if key in data}
    for key, value in data.items():
        if _pickled(value) and key not in objects:
            objects[key] = getattr(skeleton, key)  # _algorithm_mismatch made sure it is one of its settings
    return objects


def load_algorithm(cfg: Config, path: Path, lm: LayerModel, env: VecEnv | None = None) -> BaseAlgorithm:
    """Load a saved ``cfg.agent.algo`` policy for ``lm`` (optimizer state and ``num_timesteps`` included)
    as data, never as code: no pickled entry of the zip is unpickled (each is rebuilt from ``cfg``
    and ``lm``: policy class, spaces, schedules; buffers start empty), and SB3 reads the ``.pth``
    members with ``torch.load(weights_only=True)``. A damaged file is one DamagedModelError naming it;
    a zip of another algorithm, network or observation shape one ForeignModelError naming the mismatch."""
    cls = algorithm_class(cfg.agent.algo)
    raw, data = read_model_data(path, cls)
    skeleton = _skeleton(cls, cfg)
    why = _algorithm_mismatch(data, skeleton)
    if why is not None:
        raise ForeignModelError(f"cannot load the model {path}: not a {cls.__name__} policy of this run "
                                f"(agent.algo={cfg.agent.algo!r}): {why}")
    spaces = policy_spaces(lm, cfg.env)
    why = _space_mismatch(data, *spaces)
    if why is not None:
        raise ForeignModelError(f"cannot load the model {path}: {why}, but {lm.name} with env.block_size="
                                f"{cfg.env.block_size} gives {spaces[0].shape} ({spaces[0].dtype}) and "
                                f"{spaces[1].n} actions; is it this run's model?")
    try:
        return cls.load(io.BytesIO(raw), env=env, device="cpu",
                        custom_objects=_custom_objects(data, skeleton, cfg, spaces, env))
    except _DAMAGED as e:
        raise _damaged(path, cls, e) from None


def actor_network(model: BaseAlgorithm) -> Any:
    """The modules a deterministic action needs (policy MLP + action head), for FLOPs accounting."""
    import torch

    policy = model.policy
    parts = [getattr(policy.mlp_extractor, "policy_net", None), getattr(policy, "action_net", None)]
    return torch.nn.ModuleList([p for p in parts if p is not None])
