"""polar-rl: learn per-input programs of layers (skip / execute / loop) with reinforcement learning.

``import polar_rl`` registers the Gymnasium environment ``polar_rl/LayerProgram-v0``; the RL side
(gymnasium, SB3) is only imported when that environment is made.
"""

from polar_rl.models.adapter import LayerModel
from polar_rl.models.loading import load_model
from polar_rl.program import Action, Program
from polar_rl.tasks import load_task

ENV_ID = "polar_rl/LayerProgram-v0"


def _register() -> None:
    try:
        import gymnasium as gym
    except ImportError:  # serving-only installs
        return
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="polar_rl.envs.layer_program_env:LayerProgramEnv")


_register()

__all__ = ["ENV_ID", "Action", "LayerModel", "Program", "load_model", "load_task"]
