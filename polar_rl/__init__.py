"""polar-rl: learn per-input programs of layers (skip / execute / loop) with reinforcement learning."""

from polar_rl.program import Action, Program

__all__ = ["Action", "Program"]
