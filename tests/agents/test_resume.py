"""Kill a real training process after its first checkpoint, resume it, and reach the target."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from sb3_contrib import MaskablePPO

from polar_rl.agents.callbacks import load_rng
from polar_rl.agents.run_dir import checkpoint_paths, list_checkpoints
from tests.agents.helpers import POLAR_RL, REPO, cli_env, run_dirs, run_polar_rl

pytestmark = pytest.mark.real

TARGET = 256
# block_size 1: one layer call per env step, so 256 steps cost little; no evaluation during training
ARGS = ["--config", "configs/smoke.yaml", "--env.block_size", "1", "--training.total_timesteps", str(TARGET),
        "--training.checkpoint_freq", "64", "--training.eval_freq", "100000", "--task.test_limit", "4",
        "--training.progress_bar", "false"]


def _first_checkpoint(output_dir: Path, proc: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in run_dirs(output_dir):
            if list_checkpoints(run):
                return run
        assert proc.poll() is None, f"training exited with {proc.returncode} before its first checkpoint"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint under {output_dir} after {timeout} s")


def test_kill_after_first_checkpoint_then_resume(tmp_path: Path) -> None:
    output_dir = tmp_path / "runs"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*POLAR_RL, "train", *ARGS, "--output_dir", str(output_dir)], cwd=REPO,
                            env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        run = _first_checkpoint(output_dir, proc, timeout=300)
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
        log.close()
    before = list_checkpoints(run)
    assert before and before[0] == 64
    assert not (run / "eval.json").exists()
    state = load_rng(checkpoint_paths(run, 64)[1])  # plain JSON, never a pickle
    assert {"python", "numpy", "torch", "engine_sampler"} <= set(state)

    resumed = run_polar_rl(["train", "--resume", run, "--training.progress_bar", "false"], timeout=600)
    assert resumed.returncode == 0, (tmp_path / "first.log").read_text()[-2000:] + resumed.stderr[-5000:]
    assert f"from rl_model_{before[-1]}_steps.zip ({before[-1]} steps)" in resumed.stdout
    assert run_dirs(output_dir) == [run]  # continued in place, no new folder

    for steps in before:  # the checkpoints written before the kill are all still there
        assert all(p.is_file() for p in checkpoint_paths(run, steps))
    assert set(before) <= set(list_checkpoints(run))
    final = MaskablePPO.load(run / "model.zip", device="cpu")
    assert final.num_timesteps == TARGET
    result = json.loads((run / "eval.json").read_text())
    assert result["num_timesteps"] == TARGET and result["policy_checkpoint"] == "model.zip"
    commands = (run / "command.txt").read_text().splitlines()
    assert len(commands) == 2 and "--resume" in commands[1]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == TARGET
