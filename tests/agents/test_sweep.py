"""Sweeps (issue 9): W&B sweep configs run offline by the ``sweeps`` engine, resumed, and plotted."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from polar_rl.agents.sweep import expand_command, format_value, run_cli, to_builtin
from polar_rl.config import ConfigError
from tests.agents.helpers import REPO, run_polar_rl

SMOKE = REPO / "configs" / "sweeps" / "smoke.yaml"


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _grid(parameters: dict, **extra: object) -> dict:
    return {"method": "grid", "metric": {"name": "eval/score", "goal": "maximize"}, "parameters": parameters,
            "command": ["${env}", "polar-rl", "train", "--config", "configs/smoke.yaml", "${args}"], **extra}


@pytest.mark.parametrize(("cfg", "needle"), [
    ({**_grid({"env.compute_penalty": {"values": [0.1]}}), "method": "grod"}, "'grod' is not one of"),
    ({**_grid({"env.compute_penalty": {"min": 2.0, "max": 1.0}}), "method": "random"}, "min 2.0 is not less than max 1.0"),
    (_grid({"env.compute_penalty_x": {"values": [0.1]}}), "unknown key 'env.compute_penalty_x'"),
    (_grid({"env.compute_penalty": {"values": [0.1, -3]}}), "'env.compute_penalty' = -3: env.compute_penalty must be >= 0"),
    (_grid({"env.compute_penalty": {"values": [0.1]}}, metric={"name": "loss"}), "metric 'loss' is not logged"),
    (_grid({"env.compute_penalty": {"values": [0.1]}}, command=["polar-rl", "train", "${argz}"]),
     r"macro \$\{argz\} is not supported"),
])
def test_an_invalid_sweep_config_fails_before_any_trial(tmp_path: Path, cfg: dict, needle: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=needle):
        run_cli([str(_write(tmp_path, cfg)), "--local", "--out", str(out)])
    assert not out.exists()


def test_random_and_bayes_need_a_count(tmp_path: Path) -> None:
    cfg = {**_grid({"env.compute_penalty": {"min": 0.1, "max": 1.0}}), "method": "random"}
    with pytest.raises(ConfigError, match="never ends: give --count N"):
        run_cli([str(_write(tmp_path, cfg)), "--local", "--out", str(tmp_path / "out")])


def test_engine_suggestions_become_plain_values_and_w_and_b_macros_expand() -> None:
    from polar_rl.agents.sweep import _engine

    cfg = {"method": "random", "parameters": {"env.compute_penalty": {"min": 0.1, "max": 1.0,
                                                                      "distribution": "log_uniform_values"}}}
    (run,) = _engine().next_runs(cfg, [], validate=True)
    raw = run.config["env.compute_penalty"]["value"]
    assert isinstance(raw, np.floating)  # what the engine returns ...
    params = to_builtin({k: v["value"] for k, v in run.config.items()})
    assert type(params["env.compute_penalty"]) is float and 0.1 <= params["env.compute_penalty"] <= 1.0
    assert json.dumps(params)  # ... and what the sweep state can hold
    assert format_value([0, 1]) == "[0, 1]" and format_value(None) == "null" and format_value(True) == "true"
    cmd = expand_command({"program": "train.py", "command": ["${env}", "${interpreter}", "${program}", "${args}",
                                                             "${args_no_hyphens}"]}, {"seed": 3})
    assert cmd[1:] == ["train.py", "--seed=3", "seed=3"]


def test_a_crashing_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """Both trials fail at start-up (unknown task); the second still runs after the first failed."""
    cfg = _write(tmp_path, _grid({"task.name": {"values": ["no_such_task", "missing_too"]}}))
    out = tmp_path / "sweep"
    proc = run_polar_rl(["sweep", cfg, "--local", "--out", out], timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    state = json.loads((out / "sweep.json").read_text())
    assert [(t["params"]["task.name"], t["state"], t["exitcode"]) for t in state["trials"]] == [
        ("no_such_task", "failed", 2), ("missing_too", "failed", 2)]
    assert "unknown task 'missing_too'" in (out / "logs" / "trial-001.log").read_text()
    assert "0 of 2 trials finished" in proc.stdout


@pytest.mark.real
def test_smoke_sweep_runs_offline_resumes_without_rerunning_and_draws_the_frontier(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    first = run_polar_rl(["sweep", SMOKE, "--local", "--count", "1", "--out", out], timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in state["trials"]] == ["finished"]
    assert state["trials"][0]["run_dir"] == "runs/trial-000"  # relative to the sweep folder
    done = out / state["trials"][0]["run_dir"] / "eval.json"
    stamp = done.stat().st_mtime_ns

    again = run_polar_rl(["sweep", "--resume", out], timeout=1800)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    state = json.loads((out / "sweep.json").read_text())
    assert [(t["params"]["env.compute_penalty"], t["state"]) for t in state["trials"]] == [
        (0.05, "finished"), (0.2, "finished"), (0.8, "finished")]
    assert done.stat().st_mtime_ns == stamp  # the finished trial was not rerun
    assert (out / "logs" / "trial-000.log").read_text().count("$ ") == 1
    for t in state["trials"]:  # each trial is a normal run folder of the sweep's group
        run = out / t["run_dir"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["tracking"]["group"] == state["group"] and cfg["env"]["compute_penalty"] == t["params"]["env.compute_penalty"]
        result = json.loads((run / "eval.json").read_text())
        assert t["summary"]["test/policy/accuracy"] == result["methods"]["policy"]["accuracy"]
        assert "eval/score" in t["summary"]  # what the engine optimises

    frontier = json.loads((out / "frontier.json").read_text())
    assert len(frontier["points"]) == 3 and (out / "frontier.png").stat().st_size > 10_000
    for p in frontier["points"]:
        result = json.loads((out / p["run_dir"] / "eval.json").read_text())
        assert p["accuracy"] == result["methods"]["policy"]["accuracy"]
        assert p["best_static"] is None or p["best_static"]["name"] in result["methods"]
    assert any(p["non_dominated"] for p in frontier["points"])
    oracle = frontier["oracle"]
    assert [o["accuracy"] for o in oracle] == sorted(o["accuracy"] for o in oracle)  # more programs: never worse
    for m in frontier["static"].values():  # the ceiling is above every program it may route to
        assert next(o for o in oracle if o["compute_fraction"] >= m["compute_fraction"] - 1e-9)["accuracy"] >= m["accuracy"]
    report = (out / "report.md").read_text()
    assert report.count("| trial-") == 3
    with pytest.raises(ConfigError, match="already holds a sweep"):
        run_cli([str(SMOKE), "--local", "--out", str(out)])


def _method(acc: float, compute: float, p: float = 0.5) -> dict:
    return {"accuracy": acc, "accuracy_ci": [acc - 0.02, acc + 0.02], "compute_fraction": compute,
            "flops_fraction": compute, "delta_vs_full": acc - 0.5, "mcnemar": {"p_value": p},
            "vs_policy": {"mcnemar": {"p_value": p}}, "program": "x"}


def test_frontier_marks_dominated_trials_and_pairs_each_with_its_static_program(tmp_path: Path) -> None:
    """Two trials on the same test set: the second is dominated (less accurate at more compute); each is
    compared with the most accurate static program at its compute; the oracle router's ceiling is
    computed from the per-question records."""
    from polar_rl.agents.pareto import write_frontier

    records = {  # per question: full, greedy_3 (0.9), greedy_6 (0.8)
        "full": [1, 1, 0, 0], "greedy_3": [1, 0, 1, 0], "greedy_6": [0, 1, 0, 0], "bi_3": [0, 0, 0, 0],
        "policy": [1, 1, 1, 1]}  # (a whole set: the records hold every method of eval.json)
    trials = []
    for name, (acc, compute) in {"trial-000": (0.52, 0.80), "trial-001": (0.50, 0.90)}.items():
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        methods = {"full": {**_method(0.5, 1.0), "program": "x" * 10}, "policy": _method(acc, compute),
                   "greedy_3": _method(0.5, 0.9, 0.04),
                   "bi_3": _method(0.44, 0.9), "greedy_6": _method(0.25, 0.8, 0.001)}
        (run / "eval.json").write_text(json.dumps({"task": "arc_easy", "split": "test", "n": 4, "model": "m",
                                                   "model_hash": "h", "compute_penalty": 0.1, "seed": 0,
                                                   "methods": methods}))
        (run / "eval_records.jsonl").write_text("".join(
            json.dumps({"method": m, "example_id": f"q{i}", "correct": bool(c),
                        "compute_fraction": methods[m]["compute_fraction"]}) + "\n"
            for m, cs in records.items() for i, c in enumerate(cs)))
        trials.append({"name": name, "params": {"env.compute_penalty": compute}, "state": "finished",
                       "run_dir": str(run)})
    trials.append({"name": "trial-002", "params": {}, "state": "failed", "run_dir": str(tmp_path / "none")})
    (tmp_path / "sweep.json").write_text(json.dumps({"format": 1, "trials": trials}))

    data = write_frontier(tmp_path)
    by_trial = {p["trial"]: p for p in data["points"]}
    assert by_trial["trial-000"]["non_dominated"] and not by_trial["trial-001"]["non_dominated"]
    assert by_trial["trial-000"]["best_static"]["name"] == "greedy_6"
    assert by_trial["trial-001"]["best_static"]["name"] == "greedy_3"  # not bi_3, less accurate at 0.9
    assert by_trial["trial-001"]["best_static"]["policy_minus_static"] == pytest.approx(0.0)
    assert data["oracle"] == [{"compute_fraction": 0.8, "accuracy": 0.25, "programs": 1},
                              {"compute_fraction": 0.9, "accuracy": 0.75, "programs": 3}]
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and data["finished"] == 2 and data["trials"] == 3
    assert "trial-000 *" in (tmp_path / "report.md").read_text()


def _row(acc: float, compute: float, program: str, n: int = 4) -> dict:
    """An eval.json row as the evaluation writes it (paired tests against full and the policy)."""
    test = {"delta": 0.0, "delta_ci": [0.0, 0.0], "mcnemar": {"lost": 0, "gained": 0, "p_value": 1.0}}
    return {"n": n, "accuracy": acc, "accuracy_ci": [max(0.0, acc - 0.1), min(1.0, acc + 0.1)],
            "layer_calls": 30 * compute, "compute_fraction": compute, "flops_fraction": compute,
            "seconds_per_example": 0.1, "delta_vs_full": acc - 0.5, "delta_ci": [0.0, 0.0],
            "mcnemar": test["mcnemar"], "vs_policy": test, "program": program}


def test_report_verdict_and_pareto_table_name_the_same_best_static_program(tmp_path: Path) -> None:
    """One eval.json, read by report.md's verdict and by the sweep's pareto table: both name the same
    program. Traps where the two old definitions differed: a random draw and the random mean above
    every searched program, a tie (greedy_3 = skip_rank_3, listed skip_rank_3 first), and a more
    accurate program 1.1 blocks above the policy's compute (the nearest compute is not the rule)."""
    from polar_rl.agents.pareto import write_frontier
    from polar_rl.agents.report import report_markdown

    skip3, skip2 = "x" * 16 + "-x--" + "x" * 10, "x" * 18 + "--" + "x" * 10
    methods = {"full": {**_row(0.5, 1.0, "x" * 30), "vs_policy": None}, "policy": {**_row(0.5, 0.897, ""), "vs_policy": None},
               "skip_rank_3": _row(0.5, 0.9, skip3), "greedy_3": _row(0.5, 0.9, skip3),
               "bi_3": _row(0.25, 0.9, "x" * 13 + "--xx-" + "x" * 12), "greedy_2": _row(1.0, 0.933, skip2),
               "random_3_s0": _row(0.75, 0.9, "---" + "x" * 27), "policy_static": _row(1.0, 0.9, skip3),
               "random_3": {"accuracy": 0.75, "accuracy_min": 0.75, "accuracy_max": 0.75, "seeds": 1,
                            "compute_fraction": 0.9, "aggregate": True}}
    result = {"task": "arc_easy", "split": "test", "n": 4, "model": "m", "model_hash": "h", "compute_penalty": 0.1,
              "seed": 0, "policy_decoding": "greedy", "methods": methods}
    run = tmp_path / "runs" / "trial-000"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps(result))
    (run / "eval_records.jsonl").write_text("".join(
        json.dumps({"method": name, "example_id": f"q{i}", "correct": i < 4 * m["accuracy"],
                    "compute_fraction": m["compute_fraction"]}) + "\n"
        for name, m in methods.items() if not m.get("aggregate") for i in range(4)))
    (tmp_path / "sweep.json").write_text(json.dumps({"format": 1, "trials": [
        {"name": "trial-000", "params": {"env.compute_penalty": 0.1}, "state": "finished", "run_dir": str(run)}]}))

    verdict = re.search(r"Best static program at the policy's compute [^`]*`(\w+)`", report_markdown(result))
    data = write_frontier(tmp_path)
    table = re.search(r"\| trial-000 [^\n]*\| `(\w+)` [0-9.]+ @", (tmp_path / "report.md").read_text())
    assert verdict is not None and table is not None
    assert verdict[1] == table[1] == data["points"][0]["best_static"]["name"] == "greedy_3"
    assert [o["programs"] for o in data["oracle"]] == [3, 4]  # the ceiling routes over the searched programs only


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_config_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every parameter of the shipped sweep configs is a config key with valid values (dry run)."""
    from polar_rl.agents.sweep import read_sweep_config, validate

    monkeypatch.chdir(REPO)  # the commands name their base config relative to the repository
    cfg = read_sweep_config(path)
    validate(cfg, str(path))
    assert run_cli([str(path), "--dry-run", "--count", "1"]) == 0


def test_resume_continues_an_interrupted_trial_from_its_checkpoint_or_restarts_it(tmp_path: Path, monkeypatch) -> None:
    """A sweep killed mid-trial: the trial with a checkpoint is resumed with ``train --resume``; one killed
    before its first checkpoint starts over under a new run folder; finished and failed ones are left."""
    import polar_rl.agents.sweep as sw
    from polar_rl.agents.run_dir import checkpoint_paths

    monkeypatch.chdir(REPO)
    cfg = to_builtin(sw.read_sweep_config(SMOKE))
    runs = tmp_path / "runs"
    for steps, name in ((64, "trial-000"), (None, "trial-001")):
        (runs / name).mkdir(parents=True)
        if steps:
            for p in checkpoint_paths(runs / name, steps):
                p.parent.mkdir(exist_ok=True)
                p.write_bytes(b"x")
    done = runs / "trial-003"  # completed while the sweep itself died (it never recorded the exit)
    done.mkdir()
    (done / "eval.json").write_text(json.dumps({"methods": {"policy": {"accuracy": 0.5, "mcnemar": {"p_value": 1.0}}}}))
    trials = [sw.Trial("trial-000", {"env.compute_penalty": 0.05}, "running", str(runs / "trial-000")),
              sw.Trial("trial-001", {"env.compute_penalty": 0.2}, "running", str(runs / "trial-001")),
              sw.Trial("trial-002", {"env.compute_penalty": 0.8}, "failed", str(runs / "trial-002"), exitcode=1),
              sw.Trial("trial-003", {"env.compute_penalty": 0.1}, "running", str(done))]
    sw.Sweep(tmp_path, cfg, str(SMOKE), "sweep-x", trials).save()
    started: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(sw.LocalSweep, "start", lambda self, trial, command: started.append((trial.name, command)))
    sweep = sw.Sweep.load(tmp_path)
    local = sw.LocalSweep(sweep)
    for trial in [t for t in sweep.trials if t.state not in sw.TERMINAL]:
        local.restart(trial)
    assert started[0] == ("trial-000", [sys.executable, "-m", "polar_rl.agents.cli", "train", "--resume",
                                        str(runs / "trial-000")])
    assert started[1][0] == "trial-001" and "--run_name=trial-001-attempt2" in started[1][1]
    assert "--env.compute_penalty=0.2" in started[1][1] and sweep.trials[1].run_dir.endswith("trial-001-attempt2")
    assert sweep.trials[2].state == "failed" and len(started) == 2
    assert sweep.trials[3].state == "finished" and sweep.trials[3].summary["test/policy/accuracy"] == 0.5
    assert sw.Sweep.load(tmp_path).trials[3].state == "finished"  # saved
    assert local.propose() is None  # the grid's three points are all taken: nothing new to run


def test_hyperband_stops_a_trial_that_falls_behind(tmp_path: Path) -> None:
    """Hyperband reads each trial's ``eval/score`` rows from its metrics.jsonl while it runs; the trial below
    the band's threshold is sent SIGTERM and recorded as killed (early terminated), the other runs on."""
    import subprocess
    import time

    import polar_rl.agents.sweep as sw

    cfg = {"method": "grid", "metric": {"name": "eval/score", "goal": "maximize"},
           "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
           "parameters": {"seed": {"values": [0, 1, 2, 3, 4]}}}
    scores = {0: [0.5, 0.55, 0.6], 1: [0.5, 0.56], 2: [0.5, 0.57], 3: [0.2, 0.21], 4: [0.7, 0.71]}
    trials = []
    for seed, values in scores.items():
        run = tmp_path / "runs" / f"trial-{seed:03d}"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "eval/score": v}) + "\n"
                                                   for i, v in enumerate(values)))
        trials.append(sw.Trial(run.name, {"seed": seed}, "finished" if seed < 3 else "running", str(run)))
    sweep = sw.Sweep(tmp_path, cfg, "x.yaml", "sweep-x", trials)
    local = sw.LocalSweep(sweep)
    for t in trials[3:]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        local.running.append(sw.Running(t, proc, open(tmp_path / f"{t.name}.log", "w")))
    local.reap()  # decides: trial-003 falls behind at the second evaluation
    assert trials[3].early_terminated and not trials[4].early_terminated
    deadline = time.time() + 30
    while local.running[0].process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    local.reap()
    assert trials[3].state == "killed" and trials[4].state == "running"
    local.running[0].process.kill()
    local.running[0].process.wait()
