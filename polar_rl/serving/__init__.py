"""Serving runtime for exported policies: no stable_baselines3, gymnasium or wandb needed.

    from polar_rl.serving import PolarRunner
    runner = PolarRunner.load("runs/<run>/export")
    text, program = runner.generate_text("The capital of France is", max_new_tokens=16)
"""

from polar_rl.serving.manifest import MANIFEST_VERSION, ServingError, read_manifest
from polar_rl.serving.policy import BACKENDS, load_policy
from polar_rl.serving.runner import ChoiceResult, Generation, PolarRunner, check_model

__all__ = [
    "BACKENDS", "MANIFEST_VERSION", "ChoiceResult", "Generation", "PolarRunner", "ServingError", "check_model",
    "load_policy", "read_manifest",
]
