"""Trust, round two, for sweeps (issue 20): a killed driver, a sweep read from elsewhere, a base config
edited between start and ``--resume``, a command that is not a training, a damaged ``sweep.json``, a
lock refusal worded for the command.

Trials are real ``polar-rl train`` runs of a tiny random model (a local folder with a byte-level
tokenizer) on the shipped 20-question example spec: seconds each. Each test asserts the exit code, that
the message names the bad value, and what is (not) left on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from polar_rl.agents import cli
from polar_rl.agents import sweep as sw
from polar_rl.agents.run_dir import RunLock, list_checkpoints
from polar_rl.fileio import sha256
from tests.agents.helpers import POLAR_RL, REPO, cli_env, tiny_model_dir

EXAMPLE_SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base config for seconds-long trials: the tiny model, the example spec, 64 steps."""
    root = tmp_path_factory.mktemp("base")
    model = tiny_model_dir(root / "tinymodel")
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 0, "model": {"name": str(model)},
        "task": {"name": str(EXAMPLE_SPEC), "eval_limit": 4, "test_limit": 4},
        "env": {"block_size": 1, "n_envs": 4}, "agent": {"n_steps": 16, "batch_size": 32},
        "training": {"total_timesteps": 64, "eval_freq": 64, "checkpoint_freq": 64, "progress_bar": False},
        "tracking": {"mode": "disabled"}, "baselines": {"search_limit": 4, "random_seeds": 1}}))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CLI's environment: one cache for the module, so trials share their static-program results."""
    return cli_env(POLAR_RL_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _cache(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLAR_RL_CACHE", env["POLAR_RL_CACHE"])


def _config(base: Path, **parameters: Any) -> dict[str, Any]:
    """A one-point grid over env.compute_penalty (plus ``parameters``) training on ``base``."""
    return {"method": "grid", "metric": {"name": "eval/score", "goal": "maximize"},
            "parameters": {"env.compute_penalty": {"values": [0.1]}, **parameters},
            "command": ["${env}", "polar-rl", "train", "--config", str(base), "${args}"]}


def _new_sweep(folder: Path, cfg: dict[str, Any], trials: list[sw.Trial] = ()) -> sw.Sweep:
    """A sweep's state as ``polar-rl sweep CONFIG --out folder`` saves it before its first trial."""
    sweep = sw.new_sweep(folder.parent / "sweep.yaml", cfg, folder)
    sweep.trials.extend(trials)
    sweep.save()
    return sweep


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, lines
    return lines[0]


def _wait(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)
    return value


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, left unreaped by whichever process adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---- 1. a driver killed mid-trial ----------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_driver_takes_its_trial_with_it(base: Path, env: dict[str, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect: SIGKILL of the driver left its trial running and holding the run lock. Now the kernel
    sends the trial SIGTERM: the lock is free at once, the trial never completes, and --resume (from
    another working directory) resumes it from its checkpoint instead of being refused."""
    cfg = tmp_path / "sweep.yaml"  # a trial that would train for minutes on its own
    cfg.write_text(yaml.safe_dump(_config(base, **{"training.total_timesteps": {"value": 100_000}})))
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([*POLAR_RL, "sweep", str(cfg), "--local", "--out", "sweep"], cwd=tmp_path,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    run, pid = tmp_path / "sweep" / "runs" / "trial-000", 0
    try:
        _wait(lambda: driver.poll() is not None or list_checkpoints(run), 300, "the trial's first checkpoint")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        pid = int(RunLock(run).holder())  # type: ignore[arg-type]
        driver.kill()
        driver.wait()
        _wait(lambda: RunLock(run).holder() is None, 30, "the trial to release its run lock")
        _wait(lambda: not _alive(pid), 30, f"trial pid {pid} to end")
    finally:
        driver.kill()
        if pid and _alive(pid):  # the defect: an orphan trial; never leave it running
            os.kill(pid, signal.SIGKILL)
    assert not (run / "eval.json").exists()  # killed, not finished by an orphan

    monkeypatch.chdir(REPO)  # sweep.json's run folders are relative to the sweep folder, not the cwd
    sweep = sw.Sweep.load(tmp_path / "sweep")
    started: list[list[str]] = []
    monkeypatch.setattr(sw.LocalSweep, "start", lambda self, trial, command: started.append(command))
    local = sw.LocalSweep(sweep)
    local.restart(sweep.trials[0])
    assert started == [[*sw.TRAIN, "--resume", str(run)]] and not local.running
    assert sweep.trials[0].state == "running" and sweep.trials[0].run_dir == "runs/trial-000"


def test_resume_waits_for_a_trial_still_running_and_adopts_its_result(base: Path, env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """The defect: --resume was refused the lock of a trial that outlived its driver, recorded it as
    failed for good, and the frontier dropped it although it finished. A live lock holder (here a trial
    started by hand, as an orphan is where no parent-death signal exists) is waited for, and its
    eval.json makes the trial finished: not rerun, not failed, on the frontier."""
    folder = tmp_path / "sweep"
    _new_sweep(folder, _config(base), [sw.Trial("trial-000", {"env.compute_penalty": 0.1}, run_dir="runs/trial-000")])
    run = folder / "runs" / "trial-000"
    with open(tmp_path / "orphan.log", "w") as log:
        orphan = subprocess.Popen([*POLAR_RL, "train", "--config", str(base), "--env.compute_penalty=0.1",
                                   f"--output_dir={folder / 'runs'}", "--run_name=trial-000"], cwd=REPO, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: orphan.poll() is not None or RunLock(run).holder(), 300, "the orphan to lock its run")
        assert orphan.poll() is None, (tmp_path / "orphan.log").read_text()
        resumed = subprocess.run([*POLAR_RL, "sweep", "--resume", str(folder)], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=600)
        assert orphan.wait(timeout=60) == 0
    finally:
        orphan.kill()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{run} is held by pid {orphan.pid}" in resumed.stdout
    state = json.loads((folder / "sweep.json").read_text())
    assert [(t["name"], t["state"], t["exitcode"], t["attempts"], t["run_dir"]) for t in state["trials"]] == [
        ("trial-000", "finished", 0, 1, "runs/trial-000")]
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["trial-000"]  # no second attempt
    assert (run / "command.txt").read_text().count("\n") == 1  # the orphan's run, never resumed
    assert not (folder / "logs").exists()  # the sweep started no process
    assert [p["trial"] for p in json.loads((folder / "frontier.json").read_text())["points"]] == ["trial-000"]


def test_a_lock_refusal_is_never_recorded_as_a_failure(base: Path, tmp_path: Path) -> None:
    """A trial's ``train --resume`` refused its run folder's lock (exit 2) while another process (an
    evaluate of it, an orphan) holds it: the trial waits for the holder, it is not failed."""
    sweep = sw.Sweep(tmp_path, _config(base), "sweep.yaml", "sweep-x",
                     [sw.Trial("trial-000", {"env.compute_penalty": 0.1}, run_dir="runs/trial-000")])
    run = tmp_path / "runs" / "trial-000"
    run.mkdir(parents=True)
    trial, local = sweep.trials[0], sw.LocalSweep(sweep)
    with RunLock(run):
        local.ended(sw.Running(trial, None, None), 2)  # type: ignore[arg-type]
        assert local.pending == [trial] and trial.state == "running" and trial.exitcode is None
        local.restart(local.pending.pop())
        (watched,) = local.running
        assert isinstance(watched, sw.Adopted) and watched.poll() is None
    assert watched.poll() == -1  # released: decided again (resumed, or finished by its eval.json)
    assert not (tmp_path / "sweep.json").exists() and not (tmp_path / "logs").exists()


# ---- 2. run folders relative to the sweep folder, missing ones named -----------------------------


def _method(acc: float, compute: float) -> dict[str, Any]:
    return {"accuracy": acc, "accuracy_ci": [acc - 0.02, acc + 0.02], "compute_fraction": compute,
            "flops_fraction": compute, "delta_vs_full": acc - 0.5, "mcnemar": {"p_value": 0.5}}


def _finished_sweep(folder: Path, entries: dict[str, str], fmt: int = sw.FORMAT) -> None:
    """A sweep state of finished trials (name -> its run_dir entry) with their eval.json files."""
    for i, name in enumerate(entries):
        run = folder / "runs" / name
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({
            "task": "toy", "split": "test", "n": 4, "model": "m", "model_hash": "h",
            "methods": {"full": _method(0.5, 1.0), "policy": _method(0.4 + i / 10, 0.7 + i / 10)}}))
        (run / "eval_records.jsonl").write_text("".join(  # a whole set: 4 questions of each method
            json.dumps({"method": m, "example_id": f"q{q}", "correct": q < 2}) + "\n"
            for m in ("full", "policy") for q in range(4)))
    trials = [{"name": n, "params": {"env.compute_penalty": i / 10}, "state": "finished", "run_dir": entry}
              for i, (n, entry) in enumerate(entries.items())]
    (folder / "sweep.json").write_text(json.dumps({"format": fmt, "trials": trials}))


@pytest.mark.parametrize(("fmt", "prefix"), [(2, "runs"), (1, "sweeps/lam/runs")],
                         ids=["relative-to-the-sweep", "format-1-relative-to-the-cwd-of-the-time"])
def test_pareto_reads_a_sweep_from_any_folder_and_names_a_missing_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: int,
        prefix: str) -> None:
    """The defect: run folders were stored relative to the working directory, so ``polar-rl pareto``
    from elsewhere silently dropped 2 of 3 finished trials. Now they are relative to the sweep folder
    (format 1's are read compatibly), and a finished trial whose run folder is gone is named."""
    folder = tmp_path / "sweeps" / "lam"
    names = ("trial-000", "trial-001", "trial-002")
    _finished_sweep(folder, {n: f"{prefix}/{n}" for n in names}, fmt)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["pareto", str(folder)]) == 0
    assert len(json.loads((folder / "frontier.json").read_text())["points"]) == 3
    capsys.readouterr()

    (folder / "runs" / "trial-001").rename(folder / "trial-001.moved")
    assert cli.main(["pareto", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"trial-001 (finished) left out: its run folder {folder / 'runs' / 'trial-001'} is missing" in err
    data = json.loads((folder / "frontier.json").read_text())
    assert [p["trial"] for p in data["points"]] == ["trial-000", "trial-002"]
    assert [m["trial"] for m in data["missing"]] == ["trial-001"]
    assert "trial-001: its run folder" in (folder / "report.md").read_text()

    for name in ("trial-000", "trial-002"):
        (folder / "runs" / name / "eval.json").unlink()
    before = (folder / "frontier.json").read_bytes()
    assert cli.main(["pareto", str(folder)]) == 2
    line = _error_line(capsys)
    assert "nothing to plot" in line and "trial-000:" in line and "trial-001:" in line and "trial-002:" in line
    assert (folder / "frontier.json").read_bytes() == before  # nothing rewritten


# ---- 3. the base config pinned by its content -----------------------------------------------------


def test_resume_refuses_a_base_config_edited_since_the_start(base: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The defect: the base config was referenced by path, so an edit between start and --resume went
    unnoticed. Its sha256 is pinned at start; a changed one is refused with both hashes named, and a
    format-1 sweep (no hash) is pinned on its first resume."""
    own = tmp_path / "base.yaml"
    own.write_text(base.read_text())
    folder = tmp_path / "sweep"
    sweep = _new_sweep(folder, _config(own))
    pinned, saved = sha256(own), sweep.path.read_bytes()
    assert sweep.base_sha256 == pinned
    own.write_text(own.read_text().replace("total_timesteps: 64", "total_timesteps: 128"))
    assert cli.main(["sweep", "--resume", str(folder)]) == 2
    line = _error_line(capsys)
    assert f"base config {own} changed" in line and pinned in line and sha256(own) in line
    assert sweep.path.read_bytes() == saved and sorted(p.name for p in folder.iterdir()) == ["sweep.json"]

    old = json.loads(saved)  # as polar-rl wrote it before: format 1, no hash, cwd-relative run folders
    old.update(format=1, trials=[{**sw.Trial("trial-000", {"env.compute_penalty": 0.1}, "finished",
                                             "elsewhere/sweep/runs/trial-000").__dict__}])
    del old["base_sha256"]
    sweep.path.write_text(json.dumps(old))
    assert cli.main(["sweep", "--resume", str(folder), "--no-pareto"]) == 0
    assert "pinned now" in capsys.readouterr().out
    state = json.loads(sweep.path.read_text())
    assert state["format"] == 2 and state["base_sha256"] == sha256(own)
    assert state["trials"][0]["run_dir"] == "runs/trial-000"


# ---- 4. a command that is not a training ----------------------------------------------------------


@pytest.mark.parametrize(("command", "needle"), [
    (["polar-rl", "evaluate", "${args}"], "command 'polar-rl evaluate ${args}' does not run polar-rl train"),
    (["${env}", "python", "train.py", "${args}"], "command '${env} python train.py ${args}' does not run polar-rl"),
    (None, "command (none: W&B's default, ${interpreter} ${program} ${args}) does not run polar-rl train"),
    (["polar-rl", "train", "--config", "{base}"], "has no ${args}, so every trial would train the same config"),
], ids=["evaluate", "a-script", "no-command", "no-args"])
def test_a_command_that_is_not_a_training_is_refused_before_any_trial(
        base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str] | None,
        needle: str) -> None:
    """The defect: a command other than ``polar-rl train`` ran, and each trial was reported
    "failed (exit 0)" with no reason (no eval.json). Now one line names the command, before any trial."""
    cfg = _config(base)
    if command is None:
        del cfg["command"]
    else:
        cfg["command"] = [t.replace("{base}", str(base)) for t in command]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--local", "--out", str(out)]) == 2
    assert needle in _error_line(capsys)
    assert not out.exists()


# ---- 5. a damaged sweep.json --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["pareto", "sweep --resume"])
@pytest.mark.parametrize(("damage", "needle"), [
    (lambda text: text[: len(text) // 2], "not valid JSON (Unterminated string"),
    (lambda text: "[]", "expected a JSON object, got list"),
    (lambda text: text.replace('"format": 2', '"format": 9'), "format 9; this polar-rl reads 1 and 2"),
    (lambda text: text.replace('"run_dir": "runs/trial-000"', '"run_dir": null'),
     "trials[0].run_dir: expected a str, got None"),
], ids=["truncated", "a-list", "unknown-format", "no-run-folder"])
def test_a_damaged_sweep_file_is_one_line_naming_it(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    command: str, damage: Any, needle: str) -> None:
    """The defect: a truncated sweep.json gave a traceback in ``pareto`` (and a bad entry one in
    ``--resume``). Now one line names the file and the problem, and nothing is written."""
    folder = tmp_path / "sweep"
    sweep = _new_sweep(folder, _config(base), [sw.Trial("trial-000", {"env.compute_penalty": 0.1}, "finished",
                                                         "runs/trial-000")])
    sweep.path.write_text(damage(sweep.path.read_text()))
    saved = sweep.path.read_bytes()
    assert cli.main([*command.split(), str(folder)]) == 2
    line = _error_line(capsys)
    assert f"{sweep.path}: " in line and needle in line
    assert sweep.path.read_bytes() == saved and sorted(p.name for p in folder.iterdir()) == ["sweep.json"]


# ---- 6. the lock's refusal in the words of the command --------------------------------------------


def test_a_held_folder_is_refused_in_the_words_of_the_command(base: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The defect: the lock said "before resuming" for evaluate and sweep too. Each caller words it."""
    folder = tmp_path / "sweep"
    sweep = _new_sweep(folder, _config(base))
    saved = sweep.path.read_bytes()
    with RunLock(folder):  # another driver of this sweep
        assert cli.main(["sweep", "--resume", str(folder)]) == 2
    line = _error_line(capsys)
    assert f"sweep folder {folder} is in use by another process" in line and line.endswith("before resuming the sweep")
    assert sweep.path.read_bytes() == saved and not (folder / "runs").exists()
    with RunLock(folder):
        with pytest.raises(sw.ConfigError, match=r"^run folder .* before evaluating it$"):
            RunLock(folder, action="evaluating it").acquire()
        with pytest.raises(sw.ConfigError, match=r"before trying again$"):
            RunLock(folder).acquire()
