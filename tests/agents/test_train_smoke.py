"""End to end through the real CLI: ``polar-rl train --config configs/smoke.yaml`` with the real model.

One training run (module fixture, ``WANDB_MODE=offline`` overriding the file's ``disabled``) serves
the run-folder, eval.json, W&B and re-evaluation tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from polar_rl.agents import cli
from tests.agents.helpers import run_dirs, run_polar_rl, wandb_history

pytestmark = pytest.mark.real

METHOD_KEYS = {"n", "accuracy", "accuracy_ci", "layer_calls", "compute_fraction", "flops_fraction",
               "correction_rate", "retention_rate", "seconds_per_example", "delta_vs_full", "delta_ci", "mcnemar"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("smoke") / "runs"
    proc = run_polar_rl(["train", "--config", "configs/smoke.yaml", "--output_dir", output_dir],
                        WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run,) = run_dirs(output_dir)
    return run


def test_run_folder_says_how_it_was_made(smoke_run: Path) -> None:
    names = {p.name for p in smoke_run.iterdir()}
    assert {"config.yaml", "command.txt", "git.txt", "seed.txt", "checkpoints", "metrics.jsonl",
            "best_model.zip", "model.zip", "eval_records.jsonl", "eval.json", "report.md", "pareto.png",
            "layers.png"} <= names
    assert smoke_run.name.startswith("arc_easy__smollm2-135m__lam0.1__s0__")
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["seed"] == 0 and cfg["training"]["total_timesteps"] == 128
    assert (smoke_run / "seed.txt").read_text().strip() == "0"
    assert "train --config configs/smoke.yaml" in (smoke_run / "command.txt").read_text()
    git = (smoke_run / "git.txt").read_text()
    assert git.startswith("commit ") or git.strip() == "unknown"
    assert sorted(p.name for p in (smoke_run / "checkpoints").iterdir()) == [
        "rl_model_64_steps.zip", "rl_model_rng_64_steps.json"]
    assert not [p for p in smoke_run.rglob(".*.tmp")]


def test_eval_json_schema_and_numbers(smoke_run: Path) -> None:
    result = json.loads((smoke_run / "eval.json").read_text())
    assert result["task"] == "arc_easy" and result["split"] == "test" and result["n"] == 16
    assert result["model"] == "smollm2-135m" and result["seed"] == 0
    assert result["compute_penalty"] == 0.1 and result["num_timesteps"] == 128
    methods = result["methods"]
    assert {"full", "policy", "policy_static"} <= set(methods)
    k = result["matched_k"]
    assert k and all(1 <= x <= 2 for x in k)  # smoke: 6 blocks, min_compute 0.6 -> K = 2
    for family in ("bi", "skip_rank", "greedy"):
        assert {f"{family}_{x}" for x in k} <= set(methods), family
    assert any(n.startswith("random_") for n in methods)
    assert result["adaptivity"]["distinct_programs"] >= 1
    for name, m in methods.items():
        if m.get("aggregate"):
            continue
        assert METHOD_KEYS <= set(m), name
        if name != "policy":  # paired test against the policy, the same questions
            assert m["vs_policy"]["delta"] == pytest.approx(m["accuracy"] - methods["policy"]["accuracy"])
        assert m["n"] == 16
        assert 0.0 <= m["accuracy"] <= 1.0
        lo, hi = m["accuracy_ci"]
        assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
        assert 0.0 <= m["compute_fraction"] <= 2.0
        assert 0.0 < m["flops_fraction"]
        assert 0.0 <= m["mcnemar"]["p_value"] <= 1.0
    full = result["methods"]["full"]
    assert full["compute_fraction"] == 1.0 and full["flops_fraction"] == pytest.approx(1.0)
    assert full["layer_calls"] == 30 and full["delta_vs_full"] == 0.0
    records = [json.loads(line) for line in (smoke_run / "eval_records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {n for n, m in methods.items() if not m.get("aggregate")}
    for name in ("bi_1", "greedy_1", "skip_rank_1"):  # a static program: one program for every question
        if name in methods:
            assert len({r["program"] for r in records if r["method"] == name}) == 1
            assert methods[name]["compute_fraction"] == pytest.approx(5 / 6)
    report = (smoke_run / "report.md").read_text()
    assert "| policy_static |" in report and "Reproduce: `polar-rl evaluate" in report
    assert (smoke_run / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    policy = [r for r in records if r["method"] == "policy"]
    assert sum(r["correct"] for r in policy) / 16 == result["methods"]["policy"]["accuracy"]


def test_metrics_jsonl_has_rollouts_and_evaluations(smoke_run: Path) -> None:
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/score" in r]
    assert [r["step"] for r in evals] == [64, 128]
    for r in evals:
        assert r["eval/score"] == pytest.approx(r["eval/accuracy"] - 0.1 * r["eval/compute_fraction"])
        assert 0.0 <= r["eval/full_accuracy"] <= 1.0
    rollouts = [r for r in rows if "rollout/correct_rate" in r]
    assert len(rollouts) == 2
    assert {"rollout/compute_fraction", "rollout/nonfinite", "rollout/prefix_cache_hit_rate",
            "rollout/ep_rew_mean"} <= set(rollouts[-1])
    assert any(k.startswith("train/") for r in rows for k in r)


def test_wandb_offline_run_has_sb3_and_eval_keys(smoke_run: Path) -> None:
    """The offline run's history, read back from its .wandb file (see conftest.wandb_history)."""
    rows = wandb_history(smoke_run)
    keys = {k for row in rows for k in row}
    assert {"eval/accuracy", "eval/score", "rollout/ep_rew_mean", "rollout/correct_rate"} <= keys
    assert any(k.startswith("train/") for k in keys)
    assert any(k.startswith("time/") for k in keys)
    assert max(row["_step"] for row in rows) == 128
    assert (smoke_run / "wandb_id.txt").is_file()


def test_evaluate_command_re_evaluates_the_run(smoke_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["evaluate", str(smoke_run), "--split", "test", "--limit", "4", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads((smoke_run / "eval_test.json").read_text())
    assert result["n"] == 4 and {"full", "policy", "policy_static"} <= set(result["methods"])
    assert (smoke_run / "report_test.md").is_file() and (smoke_run / "pareto_test.png").is_file()
    assert result["policy_checkpoint"] == "best_model.zip"
    assert "p full" in out and "policy_static" in out
    # the first 4 test examples are the first 4 of the training run's 16: same full-model results
    train_records = [json.loads(x) for x in (smoke_run / "eval_records.jsonl").read_text().splitlines()]
    first = [r["correct"] for r in train_records if r["method"] == "full"][:4]
    assert result["methods"]["full"]["accuracy"] == sum(first) / 4


def test_evaluate_at_a_compute_target_calibrates_on_the_eval_split(
    smoke_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["evaluate", str(smoke_run), "--split", "test", "--limit", "4", "--no-progress",
                     "--target-compute", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads((smoke_run / "eval_test.json").read_text())
    assert {"full", "policy"} <= set(result["methods"])
    assert 0 < result["skip_threshold"] <= 1 and result["policy_decoding"].startswith("skip_threshold")
    # the calibration (agents.evaluate.threshold_for_target) on the 8 val questions, as it reports it
    found = re.search(r"skip threshold (\S+): compute fraction ([0-9.]+) on val \(target 0.5\)", out)
    assert found, out
    assert found[1] == f"{result['skip_threshold']:.4g}"  # the threshold evaluated is the one calibrated
    # Calibrated compute: <= the target on the calibration split. Not "near it": the smoke policy is barely
    # trained from uniform action probabilities, so every block's SKIP probability is ~1/3 on every question
    # and no threshold lies between "skip every free block" (0.0) and "skip none" (measured in CI: 0.000).
    assert float(found[2]) <= 0.5, out


def test_evaluate_curves_gives_every_k_of_every_family(smoke_run: Path) -> None:
    code = cli.main(["evaluate", str(smoke_run), "--split", "test", "--limit", "4", "--no-progress", "--curves"])
    assert code == 0
    methods = json.loads((smoke_run / "eval_test.json").read_text())["methods"]
    for family in ("bi", "skip_rank", "greedy"):  # smoke: 6 blocks, K = 2
        assert {f"{family}_1", f"{family}_2"} <= set(methods), family
        assert methods[f"{family}_2"]["compute_fraction"] == pytest.approx(4 / 6)


def test_baselines_command_lists_the_search(capsys: pytest.CaptureFixture[str]) -> None:
    from polar_rl.models.loading import cache_root

    code = cli.main(["baselines", "--config", "configs/smoke.yaml", "--limit", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "static programs searched on arc_easy/train (n=4)" in out
    assert "greedy skips" in out and "question-layer calls with prefix sharing" in out
    assert list((cache_root() / "baselines").glob("*__arc_easy__train__n4__b5__*.json"))
    assert cli.main(["baselines", "--config", "configs/smoke.yaml", "--limit", "0"]) == 2


def test_evaluate_on_another_task_keeps_the_run_s_baselines(smoke_run: Path) -> None:
    code = cli.main(["evaluate", str(smoke_run), "--split", "test", "--limit", "4", "--no-progress",
                     "--task", "openbookqa"])
    assert code == 0
    result = json.loads((smoke_run / "eval_openbookqa_test.json").read_text())
    assert result["task"] == "openbookqa" and result["trained_on"] == "arc_easy" and result["n"] == 4
    assert result["baseline_search"]["split"] == "train" and "greedy_1" in result["methods"]
    assert (smoke_run / "report_openbookqa_test.md").is_file()
    assert cli.main(["evaluate", str(smoke_run), "--task", "no_such_task", "--no-progress"]) == 2
