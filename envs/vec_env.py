"""LayerProgramVecEnv: an SB3 VecEnv of N lockstep episodes over one engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from polar_rl.config import EnvConfig
from polar_rl.envs.engine import NUM_ACTIONS, LockstepEngine
from polar_rl.envs.layer_program_env import make_engine_inputs
from polar_rl.models.adapter import LayerModel
from polar_rl.tasks.examples import Task
from polar_rl.tasks.rewards import Reference


class LayerProgramVecEnv(VecEnv):
    """N episodes of ``LayerProgramEnv`` advanced in lockstep: one batched layer call per block.

    All episodes end together; ``step_wait`` then returns the first observations of the next N
    examples and puts each final observation in ``infos[i]["terminal_observation"]``, as SB3
    expects. ``env_method("action_masks")`` gives per-env masks (sb3-contrib ``get_action_masks``).
    """

    def __init__(
        self,
        model: LayerModel | str | None = None,
        task: Task | str | None = None,
        split: str = "train",
        config: EnvConfig | None = None,
        n_envs: int | None = None,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        reference: dict[str, Reference] | None = None,
        **overrides: Any,
    ) -> None:
        lm, tk, cfg = make_engine_inputs(model, task, split, config, **overrides)
        self.engine = LockstepEngine(lm, tk, cfg, n_envs=n_envs, shuffle=shuffle, seed=seed, reference=reference)
        clip, dim = self.engine.obs_spec.clip, self.engine.obs_spec.dim
        self.render_mode = None
        super().__init__(
            self.engine.n,
            gym.spaces.Box(-clip, clip, shape=(dim,), dtype=np.float32),
            gym.spaces.Discrete(NUM_ACTIONS),
        )
        self._actions: np.ndarray | None = None

    # ---- VecEnv API -----------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.engine.seed(self._seeds[0])
        self._reset_seeds()
        self._reset_options()
        return self.engine.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async first"
        obs, rewards, done, infos = self.engine.step(self._actions)
        self._actions = None
        dones = np.full(self.num_envs, done, dtype=bool)
        if done:
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i]
                info["TimeLimit.truncated"] = False
            obs = self.engine.reset()
        return obs, rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        """(N, 3) valid actions (MaskablePPO finds this through ``env_method``)."""
        return self.engine.action_masks()

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.engine.action_masks()
            return [masks[i] for i in idx]
        result = getattr(self, method_name)(*method_args, **kwargs)
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
