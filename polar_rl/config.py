"""One typed configuration: dataclass defaults -> YAML file -> command-line overrides.

Every setting is a field of a section dataclass with a default and a one-line help text
(``field(metadata={"help": ...})``). Precedence is fixed: the defaults in this module, then a YAML
file (only the values that differ), then overrides such as ``--env.compute_penalty 0.05``. Each
section checks its own fields in ``__post_init__``; :class:`Config` adds the checks that span
sections. Every failure is a :class:`ConfigError` that names the dotted key and the bad value.

Configs are data: YAML is read with a ``SafeLoader`` subclass (no Python tags, nothing evaluated),
and override values are parsed as YAML scalars or flow collections. This module is core: it must
not import gymnasium, Stable-Baselines3 or wandb.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import secrets
import types
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Self, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ALGORITHMS",
    "DTYPES",
    "MINIBATCH_ALGORITHMS",
    "REWARD_MODES",
    "TRACKING_MODES",
    "AgentConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "ModelConfig",
    "TaskConfig",
    "TrackingConfig",
    "TrainingConfig",
    "add_config_arguments",
    "config_help",
    "load_config",
    "overrides_from_args",
    "save_config",
]

# Algorithm name -> "module:Class" of its implementation. The core never imports these; the agents
# package resolves them with importlib, so adding an algorithm means adding one line here.
ALGORITHMS: dict[str, str] = {
    "ppo": "stable_baselines3:PPO",
    "maskable_ppo": "sb3_contrib:MaskablePPO",
    "a2c": "stable_baselines3:A2C",
}
# Algorithms that split each rollout into minibatches of ``batch_size``.
MINIBATCH_ALGORITHMS: frozenset[str] = frozenset({"ppo", "maskable_ppo"})
REWARD_MODES: tuple[str, ...] = ("margin", "gold_logprob", "gold_prob", "correct")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
TRACKING_MODES: tuple[str, ...] = ("offline", "online", "disabled")
SEARCHED_FAMILIES: tuple[str, ...] = ("bi", "skip_rank", "greedy")  # static programs chosen on the train split
BASELINE_FAMILIES: tuple[str, ...] = (*SEARCHED_FAMILIES, "random")
SEARCH_OBJECTIVES: tuple[str, ...] = ("gold_prob", "margin", "gold_logprob")  # task terms a static search maximises
_WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # spellings wandb itself accepts
_DEVICE_RE = re.compile(r"^(?:cpu|mps|cuda(?::\d+)?)$")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, bad value, unreadable file."""


def _opt(default: Any, help: str) -> Any:
    """A field with a default (copied per instance when mutable) and its one-line help text."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: _deepcopy_data(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def _deepcopy_data(value: Any) -> Any:
    if isinstance(value, list):
        return [_deepcopy_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _deepcopy_data(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------
# Type checking of field values
# ----------------------------------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) != 1:  # pragma: no cover - schema error, not a user error
            raise TypeError(f"unsupported union type {tp}")
        return rest[0]
    return tp


def _type_name(tp: Any) -> str:
    if _is_optional(tp):
        return f"{_type_name(_strip_optional(tp))} | None"
    origin = get_origin(tp)
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _is_plain_data(value: Any) -> bool:
    """True for what YAML can hold and round-trip: None, bool, int, float, str, lists, str-keyed maps."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_is_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_data(v) for k, v in value.items())
    return False


def _check_value(key: str, tp: Any, value: Any) -> Any:
    """Return ``value`` checked against ``tp`` (ints widened to float, tuples to lists) or raise."""

    def bad() -> ConfigError:
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if value is None:
        if _is_optional(tp):
            return None
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got null (only optional fields may be null)")
    inner = _strip_optional(tp)
    origin = get_origin(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if inner is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if inner is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad()
        (item_tp,) = get_args(inner)
        return [_check_value(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict or inner is dict:
        if not isinstance(value, Mapping):
            raise bad()
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}: keys must be strings, got {k!r} ({type(k).__name__})")
            if not _is_plain_data(v):
                raise ConfigError(
                    f"{key}.{k}: expected plain data (null, bool, number, string, list, mapping), "
                    f"got {v!r} ({type(v).__name__})"
                )
            out[k] = _deepcopy_data(v)
        return out
    raise TypeError(f"unsupported field type {tp} for {key}")  # pragma: no cover - schema error


def _is_section_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


def _unknown_key(dotted: str, section: str, valid: Sequence[str]) -> ConfigError:
    last = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"section {section!r}" if section else "the top level"
    return ConfigError(f"unknown key {dotted!r}{hint}; valid keys of {where}: {', '.join(valid)}")


def _coerce_tree(cls: Any, data: Any, prefix: str) -> dict[str, Any]:
    """Check the keys and value types of a nested mapping against ``cls``; return constructor kwargs.

    Nested sections come back as dicts (so this can check a YAML file before overrides are merged).
    """
    if data is None:  # "env:" with every key commented out
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{prefix or 'config'}: expected a mapping of keys, got {data!r} ({type(data).__name__})"
        )
    hints = _hints(cls)
    valid = [f.name for f in fields(cls)]
    out: dict[str, Any] = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if not isinstance(k, str) or k not in valid:
            raise _unknown_key(dotted, prefix, valid)
        tp = hints[k]
        out[k] = _coerce_tree(tp, v, dotted) if _is_section_type(tp) else _check_value(dotted, tp, v)
    return out


def _construct(cls: Any, kwargs: Mapping[str, Any]) -> Any:
    hints = _hints(cls)
    built = {
        k: _construct(hints[k], v) if _is_section_type(hints[k]) else v for k, v in kwargs.items()
    }
    return cls(**built)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


class _Section:
    """Base of every section: type checks on construction, then the section's own value checks."""

    _name = ""  # the dotted prefix of this section's keys ("env", ...); "" for the top level

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field again (call it after changing fields by hand). Raises ConfigError."""
        hints = _hints(type(self))  # type: ignore[arg-type]
        for f in fields(self):  # type: ignore[arg-type]
            tp = hints[f.name]
            value = getattr(self, f.name)
            if _is_section_type(tp):
                if not isinstance(value, tp):
                    raise ConfigError(
                        f"{self._key(f.name)}: expected a {tp.__name__}, got {value!r} "
                        f"({type(value).__name__}); build nested configs with Config.from_dict"
                    )
                value.validate()
            else:
                setattr(self, f.name, _check_value(self._key(f.name), tp, value))
        self._check()

    def _check(self) -> None:
        """Value checks of this section (types are already right)."""

    def _key(self, name: str) -> str:
        return f"{self._name}.{name}" if self._name else name

    def _fail(self, name: str, requirement: str, value: Any) -> ConfigError:
        return ConfigError(f"{self._key(name)} must be {requirement}, got {value!r}")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise self._fail(name, "> 0", value)

    def _non_negative(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value >= 0:  # also rejects NaN
                raise self._fail(name, ">= 0", value)

    def _finite(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise self._fail(name, "a finite number", value)

    def _non_empty(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise self._fail(name, "a non-empty string", value)

    def _one_of(self, name: str, choices: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{self._key(name)}: unknown value {value!r}; choose one of {', '.join(choices)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a (nested) mapping; unknown keys, wrong types and bad values raise ConfigError."""
        return _construct(cls, _coerce_tree(cls, data, cls._name))

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (a deep copy) that ``from_dict`` turns back into an equal config."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(kw_only=True)
class ModelConfig(_Section):
    """The pretrained LLM whose layers the programs choose."""

    _name = "model"

    name: str = _opt("smollm2-135m", "the LLM: embedded default 'smollm2-135m', a hub id, or a local directory")
    device: str = _opt("cpu", "torch device for the LLM: cpu, cuda, cuda:N or mps")
    dtype: str = _opt("float32", "dtype of the LLM weights and activations: float32, bfloat16 or float16")
    check: bool = _opt(True, "check a model family polar-rl has not tested against its stock forward on load "
                             "(false: skip, for very large models)")

    def _check(self) -> None:
        self._non_empty("name")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"model.device: {self.device!r} is not a device; use cpu, cuda, cuda:N or mps")
        self._one_of("dtype", DTYPES)


@dataclass(kw_only=True)
class TaskConfig(_Section):
    """The task (data set and scoring) the programs are learned for."""

    _name = "task"

    name: str = _opt("arc_easy", "task name, or path to a YAML task spec")
    train_split: str = _opt("train", "split whose examples the agent trains on")
    eval_split: str = _opt("val", "split evaluated during training (best checkpoint selection)")
    test_split: str = _opt("test", "split evaluated once after training")
    eval_limit: int | None = _opt(None, "cap on eval examples during training (null: all)")
    test_limit: int | None = _opt(None, "cap on test examples (null: all)")

    def _check(self) -> None:
        self._non_empty("name", "train_split", "eval_split", "test_split")
        self._positive("eval_limit", "test_limit")
        for other in ("train_split", "eval_split"):  # picking on the split you report is test-set leakage
            if getattr(self, other) == self.test_split:
                raise ConfigError(f"task.{other} and task.test_split are both {self.test_split!r}: the test split must "
                                  f"stay unseen until the final evaluation; choose another split")


@dataclass(kw_only=True)
class EnvConfig(_Section):
    """The program-building environment: action space, reward, budget, vectorisation."""

    _name = "env"

    block_size: int = _opt(1, "consecutive layers per decision (must divide the model's layer count)")
    loop_runs: int = _opt(2, "how many times a LOOP block runs (>= 2)")
    reward: str = _opt("margin", f"task reward: {', '.join(REWARD_MODES[:-1])} or {REWARD_MODES[-1]}")
    relative_to_full: bool = _opt(
        False, "subtract the full model's task term on the same example (less variance, same optimum)"
    )
    compute_penalty: float = _opt(0.1, "lambda: reward minus lambda x compute fraction (>= 0)")
    wrong_penalty: float = _opt(0.0, "extra penalty when the answer is wrong (>= 0)")
    reward_shaping: bool = _opt(
        False, "potential-based shaping: charge each SKIP / LOOP its marginal effect on the task term at once "
        "(the potential is 'decisions so far, then every later block once'); the rewards sum to the "
        "relative_to_full reward, which it requires"
    )
    max_compute_fraction: float | None = _opt(
        None, "compute budget as a fraction of one full pass (null: none; > 0 and <= loop_runs)"
    )
    max_loops: int | None = _opt(None, "most LOOP decisions in one program (null: no cap)")
    always_execute: list[int] = _opt([], "block indices whose SKIP action is masked")
    n_envs: int = _opt(16, "parallel environments (one batched LLM forward per step)")
    prefix_cache_gb: float = _opt(4.0, "GiB for the cache of shared program-prefix activations (0 disables)")
    obs_pooled: bool = _opt(False, "observe the mean-pooled hidden state")
    obs_logit_lens: bool = _opt(True, "observe logit-lens features of the current hidden state")

    def _check(self) -> None:
        self._positive("block_size")
        if self.loop_runs < 2:
            raise self._fail("loop_runs", ">= 2 (a loop runs its block at least twice)", self.loop_runs)
        self._one_of("reward", REWARD_MODES)
        if self.reward_shaping and not self.relative_to_full:
            raise ConfigError("env.reward_shaping telescopes to the relative_to_full reward; set env.relative_to_full: true")
        self._finite("compute_penalty", "wrong_penalty", "max_compute_fraction", "prefix_cache_gb")
        self._non_negative("compute_penalty", "wrong_penalty", "max_loops", "prefix_cache_gb")
        self._positive("max_compute_fraction", "n_envs")
        if self.max_compute_fraction is not None and self.max_compute_fraction > self.loop_runs:
            raise ConfigError(
                f"env.max_compute_fraction ({self.max_compute_fraction}) exceeds env.loop_runs "
                f"({self.loop_runs}), the most compute any program can use; no budget would bind"
            )
        for i, block in enumerate(self.always_execute):
            if block < 0:
                raise self._fail(f"always_execute[{i}]", "a block index >= 0", block)

    @property
    def prefix_cache_bytes(self) -> int:
        return int(self.prefix_cache_gb * 2**30)


@dataclass(kw_only=True)
class AgentConfig(_Section):
    """The RL algorithm and its hyperparameters."""

    _name = "agent"

    algo: str = _opt("maskable_ppo", "algorithm: " + ", ".join(ALGORITHMS))
    net_arch: list[int] = _opt([64, 64], "hidden layer sizes of the policy and value networks")
    learning_rate: float = _opt(3e-4, "optimizer learning rate")
    n_steps: int = _opt(64, "rollout length per env between updates (PPO/A2C)")
    batch_size: int = _opt(256, "minibatch size (PPO); n_envs x n_steps must be a multiple of it")
    n_epochs: int = _opt(4, "passes over each rollout (PPO)")
    gamma: float = _opt(1.0, "discount factor (1.0: episodes are short and finite)")
    gae_lambda: float = _opt(0.95, "GAE lambda")
    ent_coef: float = _opt(0.01, "entropy bonus coefficient")
    init_action_probs: list[float] | None = _opt(
        None, "initial policy probabilities of [SKIP, EXECUTE, LOOP] (null: uniform); start near the full model"
    )
    warm_start: str | None = _opt(
        None, "behaviour-clone a static program before RL: 'best' (the most accurate on the eval split at "
        "env.max_compute_fraction; without a budget, the best accuracy - env.compute_penalty x compute at any k, "
        "or none when the full model wins) or a baseline name such as greedy_3 (null: none)"
    )
    warm_start_epochs: int = _opt(20, "passes over the cloned decisions")
    warm_start_episodes: int | None = _opt(None, "train questions the cloned program is rolled over (null: all)")
    kwargs: dict[str, Any] = _opt({}, "extra keyword arguments passed through to the SB3 algorithm")

    # kwargs keys that other settings own: key -> where to set it instead
    _OWNED = {
        "seed": "seed",
        "env": "the env section",
        "policy": "agent.algo (the policy class follows the algorithm)",
    }

    def _check(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"agent.algo: unknown algorithm {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        for i, width in enumerate(self.net_arch):
            if width < 1:
                raise self._fail(f"net_arch[{i}]", "a layer width >= 1", width)
        self._finite("learning_rate", "gamma", "gae_lambda", "ent_coef")
        self._positive("learning_rate", "n_steps", "n_epochs")
        if self.batch_size <= 1:
            raise self._fail("batch_size", "> 1 (advantages are normalised per minibatch)", self.batch_size)
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise self._fail(name, "in [0, 1]", value)
        self._non_negative("ent_coef")
        if self.init_action_probs is not None:
            p = self.init_action_probs
            if len(p) != 3 or any(not (0 < x < 1) for x in p) or abs(sum(p) - 1) > 1e-6:
                raise self._fail("init_action_probs", "3 probabilities in (0, 1) summing to 1", p)
        self._positive("warm_start_epochs", "warm_start_episodes")
        if self.warm_start is not None and not re.fullmatch(rf"best|({'|'.join(SEARCHED_FAMILIES)})_[1-9][0-9]*", self.warm_start):
            raise ConfigError(f"agent.warm_start: {self.warm_start!r} is not 'best' or a static program bi_K, "
                              f"skip_rank_K or greedy_K (K = skipped blocks)")
        own = {f.name for f in fields(self)} - {"algo", "kwargs"}
        for key in self.kwargs:
            if key in own:
                raise ConfigError(f"agent.kwargs.{key} duplicates a setting; set agent.{key} instead")
            if key in self._OWNED:
                raise ConfigError(f"agent.kwargs.{key} is not allowed; set {self._OWNED[key]} instead")
        policy_kwargs = self.kwargs.get("policy_kwargs")
        if policy_kwargs is not None:
            if not isinstance(policy_kwargs, dict):
                raise self._fail("kwargs.policy_kwargs", "a mapping", policy_kwargs)
            if "net_arch" in policy_kwargs:
                raise ConfigError(
                    "agent.kwargs.policy_kwargs.net_arch duplicates a setting; set agent.net_arch instead"
                )

    @property
    def uses_minibatches(self) -> bool:
        return self.algo in MINIBATCH_ALGORITHMS


@dataclass(kw_only=True)
class TrainingConfig(_Section):
    """Length of training, evaluation and checkpoint cadence."""

    _name = "training"

    total_timesteps: int = _opt(30000, "environment steps to train for, summed over all envs")
    eval_freq: int = _opt(5000, "evaluate on the eval split every this many env steps")
    checkpoint_freq: int = _opt(5000, "save a checkpoint every this many env steps")
    score_penalty: float = _opt(
        0.1, "eval/score = accuracy - score_penalty x compute_fraction (one scale for every lambda; 0.1: "
        "10 % of compute is worth 1 accuracy point)"
    )
    target_compute: float | None = _opt(
        None, "if set, the final evaluation also reports the policy with a SKIP-probability threshold "
        "calibrated on the eval split so its compute fraction is <= this (null: greedy only)"
    )
    best_metric: str = _opt("eval/score", "logged metric (higher is better) that picks the best checkpoint")
    best_min_delta: float = _opt(
        0.0, "a checkpoint replaces best_model.zip only when best_metric beats the best so far by more than this "
        "(0: any improvement, as SB3's EvalCallback; a tie within it keeps the earlier model, e.g. the warm start)"
    )
    progress_bar: bool = _opt(True, "show a progress bar")

    def _check(self) -> None:
        self._positive("total_timesteps", "eval_freq", "checkpoint_freq")
        self._finite("score_penalty", "target_compute", "best_min_delta")
        self._non_negative("score_penalty", "best_min_delta")
        self._positive("target_compute")
        self._non_empty("best_metric")


@dataclass(kw_only=True)
class BaselinesConfig(_Section):
    """Static programs (one for every input) searched on the train split, compared at matched compute."""

    _name = "baselines"

    families: list[str] = _opt(list(BASELINE_FAMILIES), "static baseline families evaluated beside the policy")
    search_limit: int | None = _opt(96, "train questions the search uses (null: all)")
    objective: str = _opt("gold_prob", "what the search keeps high: gold_prob (mean gold probability over the "
                                       "choices), margin (gold log-prob minus the best other) or gold_logprob")
    min_compute: float = _opt(0.6, "static programs skip blocks down to this compute fraction (k = 1..K)")
    greedy_candidates: int = _opt(4, "greedy re-scores the m cheapest candidates of its previous step (0: all)")
    neighbours: int = _opt(1, "also evaluate k +- this many around the policy's matched k")
    random_seeds: int = _opt(2, "random programs (one per seed) at the matched k")

    def _check(self) -> None:
        for i, family in enumerate(self.families):
            if family not in BASELINE_FAMILIES:
                raise ConfigError(f"baselines.families[{i}]: unknown family {family!r}; choose from "
                                  f"{', '.join(BASELINE_FAMILIES)}")
        self._positive("search_limit")
        self._one_of("objective", SEARCH_OBJECTIVES)
        self._non_negative("greedy_candidates", "neighbours", "random_seeds")
        if not 0 < self.min_compute < 1:
            raise self._fail("min_compute", "in (0, 1)", self.min_compute)


@dataclass(kw_only=True)
class TrackingConfig(_Section):
    """Experiment tracking with Weights & Biases."""

    _name = "tracking"

    mode: str = _opt("offline", "W&B mode: offline, online or disabled (env var WANDB_MODE overrides it)")
    project: str = _opt("polar-rl", "W&B project")
    entity: str | None = _opt(None, "W&B entity (null: the default of the logged-in user)")
    group: str | None = _opt(None, "W&B group of the run")
    tags: list[str] = _opt([], "W&B tags of the run")

    def _check(self) -> None:
        self._one_of("mode", TRACKING_MODES)
        self._non_empty("project", "entity", "group")

    def effective_mode(self) -> str:
        """The mode to run W&B in: ``$WANDB_MODE`` when set (and valid), else ``mode``."""
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if not env:
            return self.mode
        mode = _WANDB_MODE_ALIASES.get(env, env)
        if mode not in TRACKING_MODES:
            raise ConfigError(
                f"environment variable WANDB_MODE={env!r} is not a mode; use one of {', '.join(TRACKING_MODES)}"
            )
        return mode


@dataclass(kw_only=True)
class Config(_Section):
    """Everything one training run needs."""

    model: ModelConfig = _section(ModelConfig, "the pretrained LLM")
    task: TaskConfig = _section(TaskConfig, "the task and its splits")
    env: EnvConfig = _section(EnvConfig, "the program-building environment")
    agent: AgentConfig = _section(AgentConfig, "the RL algorithm")
    training: TrainingConfig = _section(TrainingConfig, "training length and cadence")
    baselines: BaselinesConfig = _section(BaselinesConfig, "static baselines beside the policy")
    tracking: TrackingConfig = _section(TrackingConfig, "experiment tracking")
    seed: int | None = _opt(None, "random seed (null: drawn at run time and recorded)")
    output_dir: str = _opt("runs", "directory under which each run gets its own directory")
    run_name: str | None = _opt(None, "name of the run directory and W&B run (null: generated)")

    def _check(self) -> None:
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise self._fail("seed", "in [0, 2**32)", self.seed)
        self._non_empty("output_dir", "run_name")
        if self.run_name is not None and (
            "/" in self.run_name or "\\" in self.run_name or self.run_name in (".", "..")
        ):
            raise ConfigError(f"run_name: {self.run_name!r} must be a plain directory name")
        if self.agent.uses_minibatches:
            n_envs, n_steps, batch = self.env.n_envs, self.agent.n_steps, self.agent.batch_size
            rollout = n_envs * n_steps
            if rollout % batch:
                raise ConfigError(
                    f"env.n_envs ({n_envs}) x agent.n_steps ({n_steps}) = {rollout} is not a multiple "
                    f"of agent.batch_size ({batch}){_batch_hint(rollout, batch)}"
                )

    @property
    def rollout_size(self) -> int:
        """Transitions collected between two updates: ``env.n_envs * agent.n_steps``."""
        return self.env.n_envs * self.agent.n_steps

    def with_seed(self, seed: int | None = None) -> Config:
        """A copy whose seed is ``seed``, else this config's seed, else a freshly drawn one."""
        if seed is None:
            seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
        return dataclasses.replace(self, seed=seed)

    def to_yaml(self) -> str:
        """Every setting as YAML; ``Config.from_dict(yaml.safe_load(c.to_yaml())) == c``."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"env.compute_penalty": 0.1, ...}``: the keys that overrides and sweeps use."""
        out: dict[str, Any] = {}
        for key, _, _ in _leaf_fields():
            section, _, name = key.rpartition(".")
            value = getattr(getattr(self, section), name) if section else getattr(self, name)
            out[key] = _deepcopy_data(value)
        return out


def _batch_hint(rollout: int, batch: int) -> str:
    divisors = [d for d in range(2, rollout + 1) if rollout % d == 0]
    if not divisors:
        return ""
    nearest = sorted(divisors, key=lambda d: (abs(d - batch), d))[:2]
    return f"; batch sizes near {batch} that divide {rollout}: {', '.join(map(str, sorted(nearest)))}"


@cache
def _leaf_fields() -> tuple[tuple[str, Any, dataclasses.Field], ...]:
    """(dotted key, type, field) for every setting, in declaration order."""
    out: list[tuple[str, Any, dataclasses.Field]] = []
    hints = _hints(Config)
    for f in fields(Config):
        tp = hints[f.name]
        if _is_section_type(tp):
            sub = _hints(tp)
            out.extend((f"{f.name}.{g.name}", sub[g.name], g) for g in fields(tp))
        else:
            out.append((f.name, tp, f))
    return tuple(out)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc,operator]


# ----------------------------------------------------------------------------------------------
# YAML: safe loading with better floats and duplicate-key errors; compact dumping
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` and ``1.0e5`` as floats (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            with suppress(TypeError):  # unhashable keys are reported by the base class
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML (YAML 1.1) needs a dot and a signed exponent for a float; add the YAML 1.2 forms.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes lists of scalars on one line (``net_arch: [64, 64]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, list | dict) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (model:, env:, ...), "
            f"got a {type(data).__name__}"
        )
    return data


# ----------------------------------------------------------------------------------------------
# Loading: defaults -> YAML -> overrides
# ----------------------------------------------------------------------------------------------


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, got the string {overrides!r}")
    tokens = list(overrides)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not isinstance(token, str) or not token.startswith("--") or token == "--":
            raise ConfigError(f"override {token!r}: expected --section.key VALUE or --section.key=VALUE")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or (isinstance(tokens[i + 1], str) and tokens[i + 1].startswith("--")):
                raise ConfigError(f"override --{key} has no value (write --{key} VALUE or --{key}=VALUE)")
            value = tokens[i + 1]
            if not isinstance(value, str):
                raise ConfigError(f"override --{key}: value {value!r} is not a string")
            i += 2
        if not key:
            raise ConfigError(f"override {token!r} has no key")
        pairs.append((key, value))
    return pairs


def _resolve_key(key: str) -> tuple[list[str], Any]:
    """Split a dotted override key into its path and the type at its end; unknown keys raise."""
    parts = [p.replace("-", "_") for p in key.split(".")]
    if any(not p for p in parts):
        raise ConfigError(f"override --{key}: empty part in the key")
    cls: Any = Config
    prefix = ""
    for depth, part in enumerate(parts):
        valid = [f.name for f in fields(cls)]
        dotted = f"{prefix}.{part}" if prefix else part
        if part not in valid:
            raise _unknown_key(dotted, prefix, valid)
        tp = _hints(cls)[part]
        rest = parts[depth + 1 :]
        if _is_section_type(tp):
            if not rest:
                names = ", ".join(f"--{dotted}.{f.name}" for f in fields(tp))
                raise ConfigError(f"override --{key}: {dotted!r} is a section; set its keys: {names}")
            cls, prefix = tp, dotted
            continue
        inner = _strip_optional(tp)
        if rest and not (inner is dict or get_origin(inner) is dict):
            raise ConfigError(f"override --{key}: {dotted!r} is a {_type_name(tp)}, it has no keys")
        return parts, (Any if rest else tp)
    raise AssertionError("unreachable")  # pragma: no cover


_NULLS = ("null", "Null", "NULL", "~")


def _parse_value(key: str, raw: str, tp: Any) -> Any:
    inner = _strip_optional(tp)
    if inner is str:  # strings stay as typed: --run_name 2024 is the name "2024"
        return None if _is_optional(tp) and raw in _NULLS else raw
    try:
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"override --{key} {raw!r}: not a YAML value: {problem}") from None


def _apply_override(data: dict[str, Any], key: str, raw: str) -> None:
    parts, tp = _resolve_key(key)
    value = _parse_value(key, raw, tp)
    if tp is not Any:
        try:
            value = _check_value(".".join(parts), tp, value)
        except ConfigError as e:
            raise ConfigError(f"override --{key}: {e}") from None
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping, got {child!r}")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; checked as a whole.

    ``overrides`` are command-line style: ``["--env.compute_penalty", "0.05", "--seed=3"]``. Values
    are parsed as YAML (numbers, ``[128, 128]``, ``true``, ``null``); string fields take the text as
    written. ``--agent.kwargs.clip_range 0.1`` sets one key of a mapping field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
        try:  # report unknown keys and wrong types against the file before merging
            _coerce_tree(Config, data, "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for key, raw in _parse_overrides(overrides):
        _apply_override(data, key, raw)
    return Config.from_dict(data)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg.to_yaml()`` to ``path`` atomically (temp file in the same directory + os.replace)."""
    from polar_rl.fileio import atomic_open

    path = Path(path)
    with atomic_open(path, "w") as f:
        f.write(cfg.to_yaml())
    return path


# ----------------------------------------------------------------------------------------------
# Command line: help text and argparse integration
# ----------------------------------------------------------------------------------------------


def _format_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return yaml.dump(value, Dumper=_Dumper, default_flow_style=True).strip()
    return str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Add ``--section.field VALUE`` for every setting, grouped by section, with help and default.

    Nothing is stored unless given (``default=argparse.SUPPRESS``), and values stay raw strings:
    pass ``overrides_from_args(args)`` to :func:`load_config` so they are parsed and checked like
    any override and precedence stays defaults -> YAML -> command line. Returns the dotted keys.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = _hints(Config)
    keys = []
    for key, tp, f in _leaf_fields():
        section = key.split(".")[0] if "." in key else ""
        if section not in groups:
            title = f"{section} settings" if section else "top-level settings"
            doc = (hints[section].__doc__ or "").strip() if section else ""
            groups[section] = parser.add_argument_group(title, doc.splitlines()[0] if doc else None)
        help_text = f"{f.metadata['help']} (default: {_format_default(_field_default(f))})"
        groups[section].add_argument(
            f"--{key}",
            dest=key,
            default=argparse.SUPPRESS,
            metavar=_type_name(tp).replace(" | None", "|null").upper(),
            help=help_text.replace("%", "%%"),
        )
        keys.append(key)
    return keys


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``--key value`` overrides that ``add_config_arguments`` options produced, for load_config."""
    out: list[str] = []
    for key, _, _ in _leaf_fields():
        if hasattr(args, key):
            out += [f"--{key}", getattr(args, key)]
    return out


def config_help() -> str:
    """One line per setting: ``--key TYPE  help (default: ...)``, grouped by section."""
    lines: list[str] = []
    current = None
    for key, tp, f in _leaf_fields():
        section = key.split(".")[0] if "." in key else ""
        if section != current:
            current = section
            lines.append(f"{section}:" if section else "top level:")
        default = _format_default(_field_default(f))
        lines.append(f"  --{key} {_type_name(tp)}  {f.metadata['help']} (default: {default})")
    return "\n".join(lines)
