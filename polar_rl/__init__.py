"""polar-rl: learn per-input programs of layers (skip / execute / loop) with reinforcement learning.

The core (this package) knows nothing of RL and imports no gymnasium, SB3 or W&B. The Gymnasium
environment ``polar_rl/LayerProgram-v0`` (:data:`ENV_ID`) is registered when :mod:`polar_rl.envs`
is imported: ``import polar_rl.envs`` then ``gym.make(ENV_ID, ...)``, or in one step
``gym.make("polar_rl.envs:polar_rl/LayerProgram-v0", ...)``.
"""

from polar_rl.models.adapter import LayerModel
from polar_rl.models.loading import load_model
from polar_rl.program import Action, Program
from polar_rl.tasks import load_task

ENV_ID = "polar_rl/LayerProgram-v0"

__all__ = ["ENV_ID", "Action", "LayerModel", "Program", "load_model", "load_task"]
