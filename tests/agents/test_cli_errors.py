"""Bad configurations and setups: one line on stderr, exit status 2, no traceback, no complete run.

In-process calls of ``cli.main`` cannot show a traceback on stderr (an uncaught exception propagates
into the test and fails it), so they assert the exit status and the ``polar-rl CMD: error:`` line;
only the console-script test, a real process, checks stderr for a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from polar_rl.agents import cli
from polar_rl.config import Config
from polar_rl.config_sources import save_config
from tests.agents.helpers import run_dirs, run_polar_rl


def _train(capsys: pytest.CaptureFixture[str], output_dir: Path, *args: str) -> str:
    base = [] if "--resume" in args else ["--output_dir", str(output_dir)]
    code = cli.main(["train", *base, "--training.progress_bar", "false", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "polar-rl train: error: " in err, err  # the ConfigError path, not some other status 2
    assert not any((d / "eval.json").exists() for d in run_dirs(output_dir))
    return err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "configs/no_such_file.yaml"], ["config file not found", "no_such_file.yaml"]),
        (["--env.compute_penaltyy", "0.1"], ["unknown key 'env.compute_penaltyy'", "did you mean 'compute_penalty'"]),
        (["--env.compute_penalty", "-0.1"], ["env.compute_penalty must be >= 0", "-0.1"]),
        (["--training.total_timesteps", "0"], ["training.total_timesteps must be > 0", "0"]),
        (["--agent.algo", "dqn"], ["unknown value 'dqn'", "maskable_ppo"]),
        (["--env.n_envs", "3", "--agent.n_steps", "10", "--agent.batch_size", "8"],
         ["env.n_envs (3) x agent.n_steps (10) = 30 is not a multiple of agent.batch_size (8)"]),
        (["--agent.algo", "ppo", "--env.max_loops", "2"], ["agent.algo='ppo' cannot use action masks", "env.max_loops=2"]),
        (["--agent.algo", "a2c", "--env.always_execute", "[0]"], ["'a2c' cannot use action masks", "always_execute"]),
        (["--training.best_metric", "eval/nope"], ["training.best_metric", "eval/score"]),
        (["--model.name", "/no/such/model"], ["model.name", "does not exist"]),
        (["--task.name", "no_such_task"], ["task.name", "unknown task 'no_such_task'"]),
        (["--env.block_size", "7"], ["block_size=7 does not divide num_layers=30"]),
    ],
    ids=["missing-config", "unknown-key", "negative-lambda", "zero-timesteps", "unknown-algo", "batch-size",
         "ppo-masking", "a2c-masking", "best-metric", "bad-model", "bad-task", "block-size"],
)
def test_train_config_errors(capsys, output_dir, args, expected) -> None:
    err = _train(capsys, output_dir, *args)
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]  # transformers' bar
    assert len(lines) == 1 and lines[0].startswith("polar-rl train: error: "), err
    for text in expected:
        assert text in lines[0]


def test_unknown_key_in_yaml(capsys, output_dir, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  n_env: 4\n")
    err = _train(capsys, output_dir, "--config", str(path))
    assert "unknown key 'env.n_env'" in err and "bad.yaml" in err


def test_resume_without_checkpoint_names_the_folder(capsys, output_dir, tmp_path) -> None:
    run = tmp_path / "runs" / "half_made_run"
    run.mkdir(parents=True)
    save_config(Config(), run / "config.yaml")
    err = _train(capsys, output_dir, "--resume", str(run))
    assert "no checkpoint" in err and str(run) in err


def test_resume_missing_folder_and_config_clash(capsys, output_dir, tmp_path) -> None:
    err = _train(capsys, output_dir, "--resume", str(tmp_path / "nowhere"))
    assert "no such folder" in err
    err = _train(capsys, output_dir, "--resume", str(tmp_path), "--env.compute_penalty", "0.2")
    assert "only training.* and tracking.*" in err


def test_unknown_command_and_usage(capsys) -> None:
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polar-rl: unknown command 'fly'; choose one of train, evaluate,"), err
    assert cli.main([]) == 2  # no command: the usage, on stderr
    assert capsys.readouterr().err.startswith("usage: polar-rl <command>")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, description) in cli.COMMANDS.items():
        assert f"  {name}" in out and description in out


def test_evaluate_on_a_folder_that_is_no_run(capsys, tmp_path) -> None:
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"polar-rl evaluate: error: {tmp_path} is not a run folder"), err


def test_console_script_exit_code(output_dir) -> None:
    """The installed ``polar-rl`` script: same one-line error and status 2 in a real process."""
    proc = run_polar_rl(["train", "--config", "configs/no_such_file.yaml", "--output_dir", output_dir], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "config file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not output_dir.exists()
