"""The settings of a run: one pydantic model per section, each field with a default, help and bounds.

Types, unknown keys and simple bounds are pydantic's (strict: nothing is coerced except an int for a
float); each section's ``_check`` adds the checks that relate its fields, and :class:`Config` the
ones that span sections. Every failure is one :class:`ConfigError` that names the dotted key and the
bad value. Where settings come from (YAML files, command-line overrides) is
:mod:`polar_rl.config_sources`. This module is core: it must not import gymnasium, SB3 or wandb.
"""

from __future__ import annotations

import difflib
import os
import re
import reprlib
import secrets
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from pydantic.fields import FieldInfo

__all__ = [
    "ALGORITHMS",
    "DTYPES",
    "MINIBATCH_ALGORITHMS",
    "REWARD_MODES",
    "TRACKING_MODES",
    "AgentConfig",
    "BaselinesConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "ModelConfig",
    "TaskConfig",
    "TrackingConfig",
    "TrainingConfig",
    "clip",
    "leaf_fields",
    "shorten",
    "type_name",
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

# Field types with their bounds (pydantic checks them and reports the bound).
PositiveInt = Annotated[int, Field(gt=0)]
Algorithm = Literal[tuple(ALGORITHMS)]  # type: ignore[valid-type]
RewardMode = Literal[REWARD_MODES]  # type: ignore[valid-type]
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
TrackingMode = Literal[TRACKING_MODES]  # type: ignore[valid-type]
BaselineFamily = Literal[BASELINE_FAMILIES]  # type: ignore[valid-type]
SearchObjective = Literal[SEARCH_OBJECTIVES]  # type: ignore[valid-type]


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` in at most about ``limit`` characters, for quoting a user's value in a message.

    Containers are cut after a few items and three levels (never walked whole: a YAML alias bomb
    stays cheap), long strings keep their ends and say how long they are.
    """
    r = reprlib.Repr()
    r.maxlevel, r.maxdict = 3, 6
    r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    r.maxstring = r.maxother = r.maxlong = max(limit, 12)
    try:
        text = r.repr(value)
    except Exception:  # a repr that fails (an int past Python's digit limit, a broken object)
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: max(limit - 3, 1)] + "..."
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value):,} chars)"
    return text


def clip(text: str, limit: int = 300) -> str:
    """``text`` (a library's error message, a key) cut to ``limit`` characters, saying how much was cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more chars)"


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, bad value, unreadable file.

    ``key`` is the dotted key at fault when there is one (``"env.n_envs"``), else None.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _opt(default: Any, help: str, **bounds: Any) -> Any:
    """A field with its default, one-line help text and optional pydantic bounds (``gt=0``...)."""
    return Field(default, description=help, **bounds)


def _section(cls: type, help: str) -> Any:
    return Field(default_factory=cls, description=help)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


class Section(BaseModel):
    """Base of every section: pydantic checks the types and bounds, then ``_check`` the values."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    _name: ClassVar[str] = ""  # the dotted prefix of this section's keys ("env", ...); "" at the top

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(e, type(self)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a (nested) mapping; unknown keys, wrong types and bad values raise ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise _config_error(e, cls) from None

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (a deep copy) that ``from_dict`` turns back into an equal config."""
        return self.model_dump()

    def replace(self, **changes: Any) -> Self:
        """A checked copy with ``changes`` applied (sections may be given as instances)."""
        return self.from_dict({**dict(self), **changes})

    def revalidate(self) -> None:
        """Check every field again, after changing fields by hand. Raises ConfigError."""
        self.from_dict(self.to_dict())

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``env:`` with every key commented out is YAML null: the section's defaults."""
        if isinstance(data, Mapping):
            empty = [k for k, f in cls.model_fields.items() if data.get(k, 0) is None and is_section(f.annotation)]
            data = {**data, **dict.fromkeys(empty, {})}
        return data

    @model_validator(mode="after")
    def _run_checks(self) -> Self:
        self._check()
        return self

    def _check(self) -> None:
        """Value checks that relate fields (types and single-field bounds are already right)."""

    def _key(self, name: str) -> str:
        return f"{self._name}.{name}" if self._name else name

    def _fail(self, name: str, requirement: str, value: Any) -> ConfigError:
        return ConfigError(f"{self._key(name)} must be {requirement}, got {shorten(value)}", self._key(name))

    def _non_empty(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise self._fail(name, "a non-empty string", value)


class ModelConfig(Section):
    """The pretrained LLM whose layers the programs choose."""

    _name = "model"

    name: str = _opt("smollm2-135m", "the LLM: embedded default 'smollm2-135m', a hub id, or a local directory")
    device: str = _opt("cpu", "torch device for the LLM: cpu, cuda, cuda:N or mps")
    dtype: Dtype = _opt("float32", "dtype of the LLM weights and activations: float32, bfloat16 or float16")
    check: bool = _opt(True, "check a model family polar-rl has not tested against its stock forward on load "
                             "(false: skip, for very large models)")

    def _check(self) -> None:
        self._non_empty("name")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"model.device: {shorten(self.device)} is not a device; use cpu, cuda, cuda:N or mps",
                              "model.device")


class TaskConfig(Section):
    """The task (data set and scoring) the programs are learned for."""

    _name = "task"

    name: str = _opt("arc_easy", "task name, or path to a YAML task spec")
    train_split: str = _opt("train", "split whose examples the agent trains on")
    eval_split: str = _opt("val", "split evaluated during training (best checkpoint selection)")
    test_split: str = _opt("test", "split evaluated once after training")
    eval_limit: PositiveInt | None = _opt(None, "cap on eval examples during training (null: all)")
    test_limit: PositiveInt | None = _opt(None, "cap on test examples (null: all)")

    def _check(self) -> None:
        self._non_empty("name", "train_split", "eval_split", "test_split")
        for other in ("train_split", "eval_split"):  # picking on the split you report is test-set leakage
            if getattr(self, other) == self.test_split:
                raise ConfigError(f"task.{other} and task.test_split are both {shorten(self.test_split)}: the test "
                                  f"split must stay unseen until the final evaluation; choose another split",
                                  f"task.{other}")


class EnvConfig(Section):
    """The program-building environment: action space, reward, budget, vectorisation."""

    _name = "env"

    block_size: PositiveInt = _opt(1, "consecutive layers per decision (must divide the model's layer count)")
    loop_runs: int = _opt(2, "how many times a LOOP block runs (>= 2)", ge=2)
    reward: RewardMode = _opt("margin", f"task reward: {', '.join(REWARD_MODES[:-1])} or {REWARD_MODES[-1]}")
    relative_to_full: bool = _opt(
        False, "subtract the full model's task term on the same example (less variance, same optimum)"
    )
    compute_penalty: float = _opt(0.1, "lambda: reward minus lambda x compute fraction (>= 0)", ge=0)
    wrong_penalty: float = _opt(0.0, "extra penalty when the answer is wrong (>= 0)", ge=0)
    reward_shaping: bool = _opt(
        False, "potential-based shaping: charge each SKIP / LOOP its marginal effect on the task term at once "
        "(the potential is 'decisions so far, then every later block once'); the rewards sum to the "
        "relative_to_full reward, which it requires"
    )
    max_compute_fraction: float | None = _opt(
        None, "compute budget as a fraction of one full pass (null: none; > 0 and <= loop_runs)", gt=0
    )
    max_loops: int | None = _opt(None, "most LOOP decisions in one program (null: no cap)", ge=0)
    always_execute: list[Annotated[int, Field(ge=0)]] = _opt([], "block indices whose SKIP action is masked")
    n_envs: PositiveInt = _opt(16, "parallel environments (one batched LLM forward per step)")
    prefix_cache_gb: float = _opt(4.0, "GiB for the cache of shared program-prefix activations (0 disables)", ge=0)
    obs_pooled: bool = _opt(False, "observe the mean-pooled hidden state")
    obs_logit_lens: bool = _opt(True, "observe logit-lens features of the current hidden state")

    def _check(self) -> None:
        if self.reward_shaping and not self.relative_to_full:
            raise ConfigError("env.reward_shaping telescopes to the relative_to_full reward; set env.relative_to_full: "
                              "true", "env.reward_shaping")
        if self.max_compute_fraction is not None and self.max_compute_fraction > self.loop_runs:
            raise ConfigError(
                f"env.max_compute_fraction ({self.max_compute_fraction}) exceeds env.loop_runs "
                f"({self.loop_runs}), the most compute any program can use; no budget would bind",
                "env.max_compute_fraction",
            )

    @property
    def prefix_cache_bytes(self) -> int:
        return int(self.prefix_cache_gb * 2**30)


class AgentConfig(Section):
    """The RL algorithm and its hyperparameters."""

    _name = "agent"

    algo: Algorithm = _opt("maskable_ppo", "algorithm: " + ", ".join(ALGORITHMS))
    net_arch: list[PositiveInt] = _opt([64, 64], "hidden layer sizes of the policy and value networks")
    learning_rate: float = _opt(3e-4, "optimizer learning rate", gt=0)
    n_steps: PositiveInt = _opt(64, "rollout length per env between updates (PPO/A2C)")
    batch_size: int = _opt(256, "minibatch size (PPO, > 1: advantages are normalised per minibatch); "
                                "n_envs x n_steps must be a multiple of it", gt=1)
    n_epochs: PositiveInt = _opt(4, "passes over each rollout (PPO)")
    gamma: float = _opt(1.0, "discount factor (1.0: episodes are short and finite)", ge=0, le=1)
    gae_lambda: float = _opt(0.95, "GAE lambda", ge=0, le=1)
    ent_coef: float = _opt(0.01, "entropy bonus coefficient", ge=0)
    init_action_probs: list[float] | None = _opt(
        None, "initial policy probabilities of [SKIP, EXECUTE, LOOP] (null: uniform); start near the full model"
    )
    warm_start: str | None = _opt(
        None, "behaviour-clone a static program before RL: 'best' (the most accurate on the eval split at "
        "env.max_compute_fraction; without a budget, the best accuracy - env.compute_penalty x compute at any k, "
        "or none when the full model wins) or a baseline name such as greedy_3 (null: none)"
    )
    warm_start_epochs: PositiveInt = _opt(20, "passes over the cloned decisions")
    warm_start_episodes: PositiveInt | None = _opt(None, "train questions the cloned program is rolled over "
                                                         "(null: all)")
    kwargs: dict[str, JsonValue] = _opt({}, "extra keyword arguments passed through to the SB3 algorithm")

    # kwargs keys that other settings own: key -> where to set it instead
    _OWNED: ClassVar[dict[str, str]] = {
        "seed": "seed",
        "env": "the env section",
        "policy": "agent.algo (the policy class follows the algorithm)",
    }

    def _check(self) -> None:
        p = self.init_action_probs
        if p is not None and (len(p) != 3 or any(not (0 < x < 1) for x in p) or abs(sum(p) - 1) > 1e-6):
            raise self._fail("init_action_probs", "3 probabilities in (0, 1) summing to 1", p)
        if self.warm_start is not None and not re.fullmatch(rf"best|({'|'.join(SEARCHED_FAMILIES)})_[1-9][0-9]*",
                                                            self.warm_start):
            raise ConfigError(f"agent.warm_start: {shorten(self.warm_start)} is not 'best' or a static program bi_K, "
                              f"skip_rank_K or greedy_K (K = skipped blocks)", "agent.warm_start")
        own = set(type(self).model_fields) - {"algo", "kwargs"}
        for key in self.kwargs:
            if key in own:
                raise ConfigError(f"agent.kwargs.{key} duplicates a setting; set agent.{key} instead",
                                  f"agent.kwargs.{key}")
            if key in self._OWNED:
                raise ConfigError(f"agent.kwargs.{key} is not allowed; set {self._OWNED[key]} instead",
                                  f"agent.kwargs.{key}")
        policy_kwargs = self.kwargs.get("policy_kwargs")
        if policy_kwargs is not None:
            if not isinstance(policy_kwargs, dict):
                raise self._fail("kwargs.policy_kwargs", "a mapping", policy_kwargs)
            if "net_arch" in policy_kwargs:
                raise ConfigError("agent.kwargs.policy_kwargs.net_arch duplicates a setting; set agent.net_arch "
                                  "instead", "agent.kwargs.policy_kwargs.net_arch")

    @property
    def uses_minibatches(self) -> bool:
        return self.algo in MINIBATCH_ALGORITHMS


class TrainingConfig(Section):
    """Length of training, evaluation and checkpoint cadence."""

    _name = "training"

    total_timesteps: PositiveInt = _opt(30000, "environment steps to train for, summed over all envs")
    eval_freq: PositiveInt = _opt(5000, "evaluate on the eval split every this many env steps")
    checkpoint_freq: PositiveInt = _opt(5000, "save a checkpoint every this many env steps")
    score_penalty: float = _opt(
        0.1, "eval/score = accuracy - score_penalty x compute_fraction (one scale for every lambda; 0.1: "
        "10 % of compute is worth 1 accuracy point)", ge=0
    )
    target_compute: float | None = _opt(
        None, "if set, the final evaluation also reports the policy with a SKIP-probability threshold "
        "calibrated on the eval split so its compute fraction is <= this (null: greedy only)", gt=0
    )
    best_metric: str = _opt("eval/score", "logged metric (higher is better) that picks the best checkpoint")
    best_min_delta: float = _opt(
        0.0, "a checkpoint replaces best_model.zip only when best_metric beats the best so far by more than this "
        "(0: any improvement, as SB3's EvalCallback; a tie within it keeps the earlier model, e.g. the warm start)",
        ge=0,
    )
    progress_bar: bool = _opt(True, "show a progress bar")

    def _check(self) -> None:
        self._non_empty("best_metric")


class BaselinesConfig(Section):
    """Static programs (one for every input) searched on the train split, compared at matched compute."""

    _name = "baselines"

    families: list[BaselineFamily] = _opt(list(BASELINE_FAMILIES), "static baseline families evaluated beside "
                                                                    "the policy")
    search_limit: PositiveInt | None = _opt(96, "train questions the search uses (null: all)")
    objective: SearchObjective = _opt("gold_prob", "what the search keeps high: gold_prob (mean gold probability "
                                                   "over the choices), margin (gold log-prob minus the best other) "
                                                   "or gold_logprob")
    min_compute: float = _opt(0.6, "static programs skip blocks down to this compute fraction (k = 1..K)", gt=0, lt=1)
    greedy_candidates: int = _opt(4, "greedy re-scores the m cheapest candidates of its previous step (0: all)", ge=0)
    neighbours: int = _opt(1, "also evaluate k +- this many around the policy's matched k", ge=0)
    random_seeds: int = _opt(2, "random programs (one per seed) at the matched k", ge=0)


class TrackingConfig(Section):
    """Experiment tracking with Weights & Biases."""

    _name = "tracking"

    mode: TrackingMode = _opt("offline", "W&B mode: offline, online or disabled (env var WANDB_MODE overrides it)")
    project: str = _opt("polar-rl", "W&B project")
    entity: str | None = _opt(None, "W&B entity (null: the default of the logged-in user)")
    group: str | None = _opt(None, "W&B group of the run")
    tags: list[str] = _opt([], "W&B tags of the run")

    def _check(self) -> None:
        self._non_empty("project", "entity", "group")

    def effective_mode(self) -> str:
        """The mode to run W&B in: ``$WANDB_MODE`` when set (and valid), else ``mode``."""
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if not env:
            return self.mode
        mode = _WANDB_MODE_ALIASES.get(env, env)
        if mode not in TRACKING_MODES:
            raise ConfigError(
                f"environment variable WANDB_MODE={shorten(env)} is not a mode; use one of {', '.join(TRACKING_MODES)}"
            )
        return mode


class Config(Section):
    """Everything one training run needs."""

    model: ModelConfig = _section(ModelConfig, "the pretrained LLM")
    task: TaskConfig = _section(TaskConfig, "the task and its splits")
    env: EnvConfig = _section(EnvConfig, "the program-building environment")
    agent: AgentConfig = _section(AgentConfig, "the RL algorithm")
    training: TrainingConfig = _section(TrainingConfig, "training length and cadence")
    baselines: BaselinesConfig = _section(BaselinesConfig, "static baselines beside the policy")
    tracking: TrackingConfig = _section(TrackingConfig, "experiment tracking")
    seed: int | None = _opt(None, "random seed (null: drawn at run time and recorded)", ge=0, lt=2**32)
    output_dir: str = _opt("runs", "directory under which each run gets its own directory")
    run_name: str | None = _opt(None, "name of the run directory and W&B run (null: generated)")

    def _check(self) -> None:
        self._non_empty("output_dir", "run_name")
        if self.run_name is not None and (
            "/" in self.run_name or "\\" in self.run_name or self.run_name in (".", "..")
        ):
            raise ConfigError(f"run_name: {shorten(self.run_name)} must be a plain directory name", "run_name")
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
        return self.replace(seed=seed)

    def to_yaml(self) -> str:
        """Every setting as YAML; ``Config.from_dict(yaml.safe_load(c.to_yaml())) == c``."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"env.compute_penalty": 0.1, ...}``: the keys that overrides and sweeps use."""
        data, out = self.to_dict(), {}
        for key, _, _ in leaf_fields():
            section, _, name = key.partition(".")
            out[key] = data[section][name] if name else data[section]
        return out


def _batch_hint(rollout: int, batch: int) -> str:
    divisors = [d for d in range(2, rollout + 1) if rollout % d == 0]
    if not divisors:
        return ""
    nearest = sorted(divisors, key=lambda d: (abs(d - batch), d))[:2]
    return f"; batch sizes near {batch} that divide {rollout}: {', '.join(map(str, sorted(nearest)))}"


def leaf_fields() -> Iterator[tuple[str, Any, FieldInfo]]:
    """(dotted key, type, field) for every setting, in declaration order."""
    for name, f in Config.model_fields.items():
        if is_section(f.annotation):
            yield from ((f"{name}.{sub}", g.annotation, g) for sub, g in f.annotation.model_fields.items())
        else:
            yield name, f.annotation, f


# ----------------------------------------------------------------------------------------------
# Types and errors: pydantic's ValidationError -> one ConfigError naming the key and the value
# ----------------------------------------------------------------------------------------------


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


def strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def is_text(tp: Any) -> bool:
    """A string field (also one with fixed choices): command-line values stay as typed."""
    inner = strip_optional(tp)
    return inner is str or get_origin(inner) is Literal


def type_name(tp: Any) -> str:
    """``int``, ``float | None``, ``list[int]``, ``mapping``: a field's type as the user reads it."""
    if is_optional(tp):
        return f"{type_name(strip_optional(tp))} | None"
    origin = get_origin(tp)
    if origin is Annotated:
        return type_name(get_args(tp)[0])
    if origin is Literal:
        return "str"
    if origin is list:
        return f"list[{type_name(get_args(tp)[0])}]"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_ITEM_TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
               "list_type": "list", "dict_type": "mapping"}


def _unknown_key(dotted: str, section: str, valid: Sequence[str]) -> ConfigError:
    last = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = f"section {section!r}" if section else "the top level"
    return ConfigError(f"unknown key {shorten(dotted)}{hint}; valid keys of {where}: {', '.join(valid)}", dotted)


def _dotted(prefix: str, loc: Sequence[str | int]) -> str:
    key = prefix
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _field_at(root: type[Section], loc: Sequence[str | int]) -> tuple[type[Section], FieldInfo | None]:
    """The section that holds the key at ``loc`` and its field (None past the field: a list item)."""
    cls, f = root, None
    for part in loc:
        if f is not None:
            return cls, None
        f = cls.model_fields.get(part) if isinstance(part, str) else None
        if f is None:
            return cls, None
        if is_section(f.annotation):
            cls, f = f.annotation, None
    return cls, f


def _config_error(exc: ValidationError, root: type[Section]) -> ConfigError:
    """The first problem pydantic found, as one line that names the dotted key and the bad value."""
    err = exc.errors(include_url=False)[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):  # raised by a _check
        return cause
    loc, kind, value = err["loc"], err["type"], err["input"]
    key = _dotted(root._name, loc)
    got = "null" if value is None else f"{shorten(value)} ({type(value).__name__})"
    if kind == "extra_forbidden":
        owner, _ = _field_at(root, loc[:-1])
        return _unknown_key(key, owner._name, list(owner.model_fields))
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        bound = err["ctx"][name]  # a float field's bound comes back as a float: 0 reads better than 0.0
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return ConfigError(f"{clip(key)} must be {op} {bound}, got {shorten(value)}", key)
    if kind == "finite_number":
        return ConfigError(f"{clip(key)} must be a finite number, got {shorten(value)}", key)
    if kind == "literal_error":
        return ConfigError(f"{clip(key)}: unknown value {shorten(value)}; choose one of {err['ctx']['expected']}", key)
    if kind == "model_type":  # a section given as something other than a mapping
        return ConfigError(f"{clip(key)}: expected a mapping of keys, got {got}", key)
    _, f = _field_at(root, loc)
    expected = type_name(f.annotation) if f is not None else _ITEM_TYPES.get(kind, kind)
    if value is None:
        return ConfigError(f"{clip(key)}: expected {expected}, got null (only optional fields may be null)", key)
    if kind.endswith("_type") or kind == "is_instance_of":
        return ConfigError(f"{clip(key)}: expected {expected}, got {got}", key)
    return ConfigError(f"{clip(key)}: {clip(err['msg'])}, got {got}", key)
