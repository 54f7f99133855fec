"""LayerProgramEnv: build a program of layers for one example, one block at a time."""

from __future__ import annotations

import numbers
from typing import Any

import gymnasium as gym
import numpy as np

from polar_rl.config import EnvConfig
from polar_rl.envs.engine import NUM_ACTIONS, InvalidActionError, LockstepEngine
from polar_rl.models.adapter import LayerModel
from polar_rl.program import Action
from polar_rl.tasks.examples import Task
from polar_rl.tasks.rewards import Reference


def make_engine_inputs(
    model: LayerModel | str | None, task: Task | str | None, split: str, config: EnvConfig | None, **overrides: Any
) -> tuple[LayerModel, Task, EnvConfig]:
    """Resolve model / task / config arguments (names are loaded; objects pass through)."""
    from polar_rl.models.loading import DEFAULT_MODEL, load_model
    from polar_rl.tasks import load_task

    lm = model if isinstance(model, LayerModel) else load_model(model or DEFAULT_MODEL)
    tk = task if isinstance(task, Task) else load_task(task or "arc_easy", split)
    cfg = config or EnvConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    return lm, tk, cfg


class LayerProgramEnv(gym.Env[np.ndarray, np.int64]):
    """
    ## Description
    An episode builds a *program of layers* for one example of a task split on a pretrained causal
    LM. The layers are split into B blocks of ``block_size`` consecutive layers; at decision step b
    (b = 0 .. B-1) the agent decides what block b does to the current hidden state: skip it, run it
    once, or loop it (``loop_runs`` times in a row). After the last block the final norm and head
    read the result and the task scores it (multiple choice, lm-eval "rc" log-prob scoring).

    ## Action Space
    ``Discrete(3)``: ``Action.SKIP`` = 0, ``Action.EXECUTE`` = 1, ``Action.LOOP`` = 2.
    ``action_masks()`` returns the valid actions (sb3-contrib ``MaskablePPO``): SKIP is masked on
    ``always_execute`` blocks; EXECUTE / LOOP when they would exceed ``max_compute_fraction``
    (budget reserved for later forced blocks); LOOP once ``max_loops`` loops were used. A masked
    action raises ``InvalidActionError`` (never silently remapped).

    ## Observation Space
    ``Box(-50, 50, (D,), float32)``, layout in ``polar_rl.observation``: final-normed hidden state at
    the last context token (H), optionally the pooled context state (H) and logit-lens features (3),
    the block index one-hot (B + 1), compute used so far / num_layers (1), previous action one-hot (4).

    ## Rewards
    Per step: ``-compute_penalty * layer_calls_this_step / num_layers`` (the compute cost is paid as
    the calls happen; the sum is lambda x compute fraction). At the last step, plus the task term:
    ``margin`` (default): log-prob of the gold choice minus the best other, clipped to [-10, 10];
    ``gold_logprob``: log-prob of gold normalised over the choices, clipped to [-10, 0];
    ``gold_prob``: that probability (a soft accuracy: a flat, uninformed answer earns the chance
    level 1/k, so it cannot be gamed by flattening the output, which the margin rewards when the full
    model's average margin is negative); ``correct``: 1 / 0. With ``relative_to_full`` the full
    model's term on the same example is subtracted (same optimum, the question's difficulty
    cancels). Minus ``wrong_penalty`` when wrong. ``info`` at the end carries ``correct``,
    ``margin``, ``layer_calls``, ``compute_fraction``, ``runs``, ``program``, ``full_correct`` /
    ``full_margin`` (the full model on the same example), ``nonfinite`` and ``reward_task``.

    ## Starting State
    The embedded tokens of the next example (examples are drawn without replacement in an order
    shuffled with ``self.np_random``; mixtures sample by weight).

    ## Episode End
    Terminates after B decisions. A non-finite hidden state ends the useful part of an episode: its
    remaining blocks do nothing, its observation is zeros, it receives the worst task reward and
    ``info["nonfinite"] = True``; the engine counts such episodes.

    ## Arguments
    ``gym.make("polar_rl/LayerProgram-v0", model="smollm2-135m", task="arc_easy", split="train",
    config=EnvConfig(...), **env_config_overrides)`` after ``import polar_rl.envs`` (which registers
    the id), or ``gym.make("polar_rl.envs:polar_rl/LayerProgram-v0", ...)`` without it; ``model`` /
    ``task`` may also be loaded objects.

    ## Version History
    * v0: initial version (observation layout and rewards as above).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: LayerModel | str | None = None,
        task: Task | str | None = None,
        split: str = "train",
        config: EnvConfig | None = None,
        *,
        shuffle: bool = True,
        reference: dict[str, Reference] | None = None,
        **overrides: Any,
    ) -> None:
        lm, tk, cfg = make_engine_inputs(model, task, split, config, **overrides)
        self.engine = LockstepEngine(lm, tk, cfg, n_envs=1, shuffle=shuffle, reference=reference)
        dim = self.engine.obs_spec.dim
        clip = self.engine.obs_spec.clip
        self.observation_space = gym.spaces.Box(-clip, clip, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            self.engine.seed(self.np_random)
            self._seeded = True
        obs = self.engine.reset()
        return obs[0], {"example_id": self.engine.ep.examples[0].id}  # type: ignore[union-attr]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action[()]
        if isinstance(action, bool | np.bool_) or not isinstance(action, numbers.Integral):
            raise InvalidActionError(f"action must be an int (SKIP=0, EXECUTE=1, LOOP=2), got {action!r} "
                                     f"({type(action).__name__})")
        obs, rewards, done, infos = self.engine.step([int(action)])
        return obs[0], float(rewards[0]), bool(done), False, infos[0]

    def action_masks(self) -> np.ndarray:
        return self.engine.action_masks()[0]

    @property
    def actions(self) -> type[Action]:
        return Action
