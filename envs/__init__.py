"""Gymnasium side of polar-rl: the lockstep engine, the single env and the SB3 VecEnv.

``import polar_rl`` registers ``polar_rl/LayerProgram-v0``.
"""

from polar_rl.envs.engine import InvalidActionError, LockstepEngine, Reference
from polar_rl.envs.layer_program_env import LayerProgramEnv
from polar_rl.envs.prefix_cache import PrefixCache
from polar_rl.envs.vec_env import LayerProgramVecEnv

__all__ = ["InvalidActionError", "LayerProgramEnv", "LayerProgramVecEnv", "LockstepEngine", "PrefixCache", "Reference"]
