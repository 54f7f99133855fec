"""Gymnasium side of polar-rl: the lockstep engine, the single env and the SB3 VecEnv.

Importing this package registers ``polar_rl/LayerProgram-v0`` (:data:`polar_rl.ENV_ID`), so both
``import polar_rl.envs; gym.make("polar_rl/LayerProgram-v0", ...)`` and
``gym.make("polar_rl.envs:polar_rl/LayerProgram-v0", ...)`` work.
"""

import gymnasium as gym

from polar_rl import ENV_ID
from polar_rl.envs.engine import InvalidActionError, LockstepEngine
from polar_rl.envs.layer_program_env import LayerProgramEnv
from polar_rl.envs.prefix_cache import PrefixCache
from polar_rl.envs.vec_env import LayerProgramVecEnv

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="polar_rl.envs.layer_program_env:LayerProgramEnv")

__all__ = ["InvalidActionError", "LayerProgramEnv", "LayerProgramVecEnv", "LockstepEngine", "PrefixCache"]
