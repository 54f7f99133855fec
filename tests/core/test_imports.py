"""Import boundaries, checked in a fresh interpreter: the core, serving and the baselines command load
no RL or tracking package; importing the environments registers the Gymnasium id."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RL_AND_TRACKING = ("stable_baselines3", "sb3_contrib", "gymnasium", "wandb")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _loaded_after(statement: str, packages: tuple[str, ...]) -> list[str]:
    out = _run(f"""
        import json, sys
        {statement}
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({packages!r}))))
    """)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", ["import polar_rl", "import polar_rl.serving",
                                       "import polar_rl.search.families, polar_rl.search.runner, polar_rl.tasks.rewards"])
def test_core_imports_no_rl_or_tracking_package(statement: str) -> None:
    assert _loaded_after(statement, RL_AND_TRACKING) == []


def test_baselines_command_imports_no_sb3_gymnasium_or_wandb() -> None:
    assert _loaded_after("import polar_rl.agents.baselines", ("stable_baselines3", "gymnasium", "wandb")) == []


def test_importing_the_environments_registers_the_id() -> None:
    out = _run("""
        import gymnasium as gym
        import polar_rl
        from tests.serving.helpers import env_config, tiny_lm, tiny_task
        assert polar_rl.ENV_ID not in gym.registry  # the core registers nothing
        env = gym.make("polar_rl.envs:polar_rl/LayerProgram-v0", model=tiny_lm(), task=tiny_task(),
                       config=env_config(n_envs=1))  # "module:id" imports the module, which registers
        assert env.spec.id == polar_rl.ENV_ID
        assert env.spec.entry_point == "polar_rl.envs.layer_program_env:LayerProgramEnv"
        env.reset(seed=0)
        print("ok")
    """)
    assert out.strip().endswith("ok")
