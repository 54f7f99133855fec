"""Trust: caches that cannot lie, runs that cannot be lost, inputs that are not coerced (issue 10).

Each test reproduces one defect class with a tiny random model (a local folder with a byte-level
tokenizer) and asserts what is, and is not, left on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from polar_rl.config import EnvConfig
from polar_rl.envs.engine import LockstepEngine
from polar_rl.search.results import ReferenceStore, reference_store
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.rewards import Reference
from tests.agents.helpers import REPO, tiny_model_dir

EXAMPLE_SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tinymodel")


@pytest.fixture(scope="module")
def tiny_lm(tiny_dir: Path):
    from polar_rl import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder (never the user's)."""
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _task(examples: list[MCExample]) -> Task:
    return Task("toy", "test", "multiple_choice", tuple(examples))


def _examples() -> list[MCExample]:
    return [MCExample(f"toy/q{i}", f"Question: what comes after {i}?\nAnswer:", (f" {i + 1}", f" {i + 7}", " no"), 0)
            for i in range(4)]


def _full_reference(lm, task: Task, reference: dict[str, Reference]) -> dict[str, Reference]:
    """Run the engine's full-model pass over ``task`` with ``reference`` as the starting cache."""
    engine = LockstepEngine(lm, task, EnvConfig(block_size=1, n_envs=len(task)), shuffle=False, reference=reference)
    engine.reset()
    return engine.reference


# ---- 1. caches that can lie -------------------------------------------------------------------


def test_reference_cache_recomputes_an_example_whose_content_changed(tiny_lm) -> None:
    """The defect: editing a task's data under the same name reused the full model's old results."""
    task = _task(_examples())
    store = reference_store(tiny_lm, task, "float32")
    ref = _full_reference(tiny_lm, task, store.load())
    assert store.save(ref)
    assert store.load() == ref  # unchanged data: everything is reused

    edited = _examples()
    edited[1] = dataclasses.replace(edited[1], gold=2)  # same id, other gold
    edited[2] = dataclasses.replace(edited[2], context="Question: something else entirely?\nAnswer:")
    edited[3] = dataclasses.replace(edited[3], choices=(" x", " y", " z"))
    new_task = _task(edited)
    new_store = reference_store(tiny_lm, new_task, "float32")
    kept = new_store.load()
    assert set(kept) == {"toy/q0"} and new_store.stale == 3
    fresh = _full_reference(tiny_lm, new_task, {})
    assert _full_reference(tiny_lm, new_task, kept) == fresh
    assert fresh["toy/q1"] != ref["toy/q1"]  # gold moved: the old value would have been wrong
    new_store.save(fresh)
    assert reference_store(tiny_lm, new_task, "float32").load() == fresh


def test_program_cache_serves_static_programs_and_recomputes_changed_examples(tiny_lm, monkeypatch) -> None:
    """Seeds and sweep trials compare against the same static programs: the second evaluation reads
    their records from disk (identical to a rerun), and an edited example is recomputed."""
    import polar_rl.agents.evaluate as ev
    from polar_rl.search.results import program_store

    task = _task(_examples())
    engine = LockstepEngine(tiny_lm, task, EnvConfig(block_size=1, n_envs=len(task)), shuffle=False)
    L = tiny_lm.num_layers
    programs = {"skip_0": [0] + [1] * (L - 1), "loop_last": [1] * (L - 1) + [2], "again": [0] + [1] * (L - 1)}
    fresh, _ = ev.rollout_programs(engine, programs)
    first, first_seconds = ev.cached_rollout_programs(engine, programs, program_store(tiny_lm, task, "float32"))
    assert first == fresh and set(first_seconds) == set(programs)

    real_rollout = ev.rollout_programs

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached program was recomputed")
    monkeypatch.setattr(ev, "rollout_programs", forbidden)
    again, _ = ev.cached_rollout_programs(engine, programs, program_store(tiny_lm, task, "float32"))
    assert again == fresh

    edited = _examples()
    edited[2] = dataclasses.replace(edited[2], gold=1)
    new_task = _task(edited)
    new_engine = LockstepEngine(tiny_lm, new_task, EnvConfig(block_size=1, n_envs=len(new_task)), shuffle=False)
    with pytest.raises(AssertionError, match="recomputed"):  # the cached records no longer match
        ev.cached_rollout_programs(new_engine, programs, program_store(tiny_lm, new_task, "float32"))
    monkeypatch.setattr(ev, "rollout_programs", real_rollout)
    recomputed, _ = ev.cached_rollout_programs(new_engine, programs, program_store(tiny_lm, new_task, "float32"))
    assert recomputed == ev.rollout_programs(new_engine, programs)[0]


def test_reference_cache_is_keyed_by_the_scoring_rule(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:
    import polar_rl.search.results as rs

    task = _task(_examples())
    reference_store(tiny_lm, task, "float32").save(_full_reference(tiny_lm, task, {}))
    monkeypatch.setattr(rs, "SCORING", rs.SCORING + " (changed)")
    assert reference_store(tiny_lm, task, "float32").load() == {}


def test_reference_cache_that_cannot_be_written_warns(cache: Path, capsys) -> None:
    blocker = cache.parent / "not_a_folder"
    blocker.write_text("")  # as root, chmod cannot make a folder read-only; nothing can be made under a file
    store = ReferenceStore("x", _task(_examples()), root=blocker / "cache")
    assert store.save({"toy/q0": Reference(True, 1.0, -0.1)}) is False
    store.save_seconds(0.5)
    assert store.load() == {} and store.load_seconds() is None
    out = capsys.readouterr().out
    assert out.count("warning: result cache") == 1 and "cannot open it" in out  # one warning, then no cache


def test_baseline_cache_is_keyed_by_the_search_set_content(tiny_lm, cache: Path, capsys) -> None:
    """The same stale-data defect in the static-program search cache: it was keyed by task name and size."""
    from polar_rl.search.families import BaselineStore, search_static_programs

    examples = _examples()
    found = search_static_programs(tiny_lm, examples, task="toy", split="test", block_size=1)

    def store(exs: list[MCExample], device: str = "cpu") -> BaselineStore:
        s = BaselineStore(tiny_lm.model_hash, "toy", "test", len(exs), 1, 0.6, 4, root=cache)
        s.expect(exs, device)
        return s

    store(examples).save(found)
    assert store(examples).load() == found
    edited = [*examples[:3], dataclasses.replace(examples[3], gold=1)]
    assert store(edited).load() is None
    assert "searched on other data or another device" in capsys.readouterr().out
    assert store(examples, "cuda:0").load() is None
    assert store(examples).load() == found


# ---- 2. runs that can be lost -------------------------------------------------------------------

TINY_ARGS = ["--config", "configs/smoke.yaml", "--task.name", str(EXAMPLE_SPEC), "--env.block_size", "1",
             "--training.total_timesteps", "192", "--training.checkpoint_freq", "64", "--training.eval_freq", "64",
             "--training.progress_bar", "false", "--baselines.search_limit", "4"]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from polar_rl.agents import cli

    code = cli.main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, err
    return lines[0]


def _steps(run: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_logs_read_as_one_run_and_keep_config(killed_run: Path, finished_run: Path, capsys) -> None:
    """The defects: a resumed run duplicated the steps after its checkpoint in metrics.jsonl and
    overwrote config.yaml with its overrides."""
    from polar_rl.agents.run_dir import list_checkpoints

    assert list_checkpoints(killed_run) == [64, 128] and max(_steps(killed_run)) == 192
    config = (killed_run / "config.yaml").read_text()
    code, out, err = _cli(capsys, "train", "--resume", killed_run, "--training.eval_freq", "32")
    assert code == 0, err
    assert "dropped" in out and "after step 128" in out
    assert _steps(killed_run).count(192) == _steps(finished_run).count(192)  # no step twice
    assert sorted(set(_steps(killed_run))) == sorted(set(_steps(finished_run)) | {160})  # eval every 32 now
    assert (killed_run / "config.yaml").read_text() == config
    assert "eval_freq: 32" in (killed_run / "config.resume_128.yaml").read_text()
    assert (killed_run / "eval.json").is_file()


def test_second_writer_of_a_run_folder_is_refused(killed_run: Path, capsys) -> None:
    """The defect: two --resume of one run at once corrupted best_model.zip (nothing locked the folder)."""
    from polar_rl.agents.run_dir import RunLock

    before = sorted(p.name for p in killed_run.rglob("*"))
    with RunLock(killed_run):  # the first writer (flock: a second open conflicts even in one process)
        code, _, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 2
    line = _one_error_line(err)
    assert "in use by another process" in line and str(killed_run) in line
    assert sorted(p.name for p in killed_run.rglob("*")) == before  # nothing written
    with RunLock(killed_run):  # evaluate writes into the folder too: refused while it is held
        code, _, err = _cli(capsys, "evaluate", killed_run, "--split", "val")
    assert code == 2 and "in use by another process" in _one_error_line(err)
    assert sorted(p.name for p in killed_run.rglob("*")) == before
    assert _cli(capsys, "train", "--resume", killed_run)[0] == 0  # released: resumable again


@pytest.mark.parametrize("damage", ["truncated-zip", "garbage-rng"])
def test_damaged_latest_checkpoint_falls_back(killed_run: Path, capsys, damage: str) -> None:
    from polar_rl.agents.run_dir import checkpoint_paths

    zip_path, rng_path = checkpoint_paths(killed_run, 128)
    if damage == "truncated-zip":
        zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    else:
        rng_path.write_bytes(b"\x80\x04garbage")
    code, out, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 0, err
    assert "checkpoint at 128 steps is damaged" in out and "newest intact checkpoint, 64 steps" in out
    assert "rl_model_64_steps.zip (64 steps)" in out
    assert max(_steps(killed_run)) == 192 and (killed_run / "eval.json").is_file()


def test_every_checkpoint_damaged_is_one_error(killed_run: Path, capsys) -> None:
    from polar_rl.agents.run_dir import checkpoint_paths

    for steps in (64, 128):
        checkpoint_paths(killed_run, steps)[0].write_bytes(b"PK\x03\x04 not really")
    code, _, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 2
    line = _one_error_line(err)
    assert "every checkpoint is damaged" in line and "rl_model_64_steps.zip" in line
    assert not (killed_run / "eval.json").exists()


def test_evaluate_on_a_damaged_zip_is_one_error(finished_run: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes((finished_run / "best_model.zip").read_bytes()[:100])
    code, _, err = _cli(capsys, "evaluate", finished_run, "--checkpoint", bad, "--split", "val")
    assert code == 2
    line = _one_error_line(err)
    assert "cannot load the model" in line and str(bad) in line
    assert not (finished_run / "eval_val.json").exists()


def test_a_cache_that_cannot_be_written_does_not_cost_the_run(tiny_dir: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    """The defect: a read-only cache folder made a finished training exit with a traceback."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("POLAR_RL_CACHE", str(blocker / "cache"))  # nothing can be created under a file
    code, out, err = _cli(capsys, "train", *TINY_ARGS, "--training.total_timesteps", "64",
                          "--model.name", tiny_dir, "--output_dir", tmp_path / "runs")
    assert code == 0, err
    assert "warning: result cache" in out and "could not write the baseline cache" in out
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "eval.json").is_file()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"WANDB_MODE": "sometimes"}, "WANDB_MODE='sometimes'"),
        (["--agent.kwargs", "{clip_range: wide}"], {}, "agent.kwargs"),
        (["--output_dir", "{blocker}/runs"], {}, "is not a folder"),
        (["--agent.warm_start", "greedy_3"], {}, "agent.warm_start: greedy_k: k=3 is beyond the search's K=1"),
    ],
    ids=["wandb-mode", "agent-kwargs-value", "output-dir-under-a-file", "warm-start-program"],
)
def test_setup_errors_come_before_the_run_folder(tiny_dir: Path, tmp_path: Path, capsys, monkeypatch,
                                                 args: list[str], env: dict[str, str], expected: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [a.replace("{blocker}", str(blocker)) for a in args]
    output_dir = tmp_path / "out"
    code, _, err = _cli(capsys, "train", *TINY_ARGS, "--model.name", tiny_dir, "--output_dir", output_dir, *args)
    assert code == 2
    assert expected in _one_error_line(err)
    assert not output_dir.exists()


def test_concurrent_saves_to_one_path_never_share_a_temp_file(tmp_path: Path) -> None:
    """The defect: two writers of best_model.zip used the same temp name."""
    import threading

    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO

    from polar_rl.agents.callbacks import save_model_atomic

    class Toy(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Discrete(3)

    model = PPO("MlpPolicy", Toy(), n_steps=8, batch_size=8, device="cpu")
    target, errors = tmp_path / "best_model.zip", []

    def save() -> None:
        try:
            for _ in range(5):
                save_model_atomic(model, target)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert PPO.load(target, device="cpu").observation_space == model.observation_space
    assert [p.name for p in tmp_path.iterdir()] == ["best_model.zip"]


# ---- 3. inputs that are coerced or contradictory ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"runs": [1, 1.0], "num_layers": 2}, "runs[1] must be an int run count, got 1.0"),
        ({"runs": [1, "1"], "num_layers": 2}, "runs[1] must be an int run count, got '1'"),
        ({"runs": [True, 1], "num_layers": 2}, "runs[0] must be an int run count, got True"),
        ({"runs": [1, 1], "num_layers": "2"}, "num_layers must be an int, got '2'"),
        ({"runs": [1, 1], "num_layers": 2.0}, "num_layers must be an int, got 2.0"),
        ({"runs": [1, 1], "num_layers": 2, "block_size": 1.0}, "block_size must be an int, got 1.0"),
        ({"runs": [1, 1], "num_layers": 2, "loop_runs": "2"}, "loop_runs must be an int, got '2'"),
        ({"runs": "11", "num_layers": 2}, "runs must be a list of ints, got '11'"),
        ({"runs": [1, 1], "num_layers": 2, "model_name": 5}, "model_name must be a string or null, got 5"),
        ({"runs": [1, 1], "num_layers": 2, "loops": 2}, "unknown fields ['loops']"),
    ],
)
def test_program_json_fields_are_never_coerced(data: dict, needle: str) -> None:
    """The defect: 1.0, "1" and True were accepted as run counts and "30" as a layer count."""
    import json

    from polar_rl.program import Program, ProgramError

    with pytest.raises(ProgramError) as err:
        Program.from_json(json.dumps(data))
    assert needle in str(err.value)
    assert Program.from_runs(np.array([1, 0]), np.int64(2)).runs == (1, 0)  # numpy ints are ints


@pytest.mark.parametrize("action", [1.0, True, "1", np.float32(1.0), np.bool_(True)])
def test_env_actions_are_never_coerced(tiny_lm, action) -> None:
    """The defect: the env ran EXECUTE for 1.7, 1.0, True and "1"."""
    from polar_rl.envs import InvalidActionError, LayerProgramEnv

    env = LayerProgramEnv(tiny_lm, _task(_examples()), config=EnvConfig(block_size=1))
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="must be an int"):
        env.step(action)
    obs, *_ = env.step(1)  # a real action still works after the refusal
    with pytest.raises(InvalidActionError, match="must be ints"):
        env.engine.step([action])


@pytest.mark.parametrize(
    ("csv_text", "spec_extra", "check"),
    [
        ("id,q,a,b,g\n007,Q1?,yes,no,A\n7,Q2?,yes,no,B\n", {}, lambda t: t.ids == ("s/007", "s/7")),
        ("id,q,a,b,g\n1,Q1?,NA,None,A\n", {}, lambda t: t[0].choices == (" NA", " None")),
        ("id,q,a,b,g\n1,Q1?,1.50,2.0,B\n", {}, lambda t: t[0].choices == (" 1.50", " 2.0")),
    ],
    ids=["leading-zero-ids", "na-strings", "decimal-choices"],
)
def test_csv_cells_are_read_as_written(tmp_path: Path, csv_text: str, spec_extra: dict, check) -> None:
    """The defect: the CSV loader re-typed cells: id "007" became 7 (colliding with "7"), "NA"
    became null and the choice "1.50" became 1.5."""
    from polar_rl.tasks import load_task

    (tmp_path / "s.csv").write_text(csv_text)
    spec = {"name": "s", "source": {"path": str(tmp_path / "s.csv")}, "id_column": "id", "context": "{q}",
            "choices": {"columns": ["a", "b"]}, "gold": {"column": "g", "type": "letter"}, **spec_extra}
    assert check(load_task(spec, "all"))


@pytest.mark.parametrize(
    ("row", "gold_type", "needle"),
    [
        ({"q": "Q?", "opts": [0.1, 0.2], "g": 0}, "index", "choice 0 (column 'opts') must be text, got 0.1 (float)"),
        ({"q": "Q?", "opts": ["a", "b"], "g": 1.0}, "index", "gold of type index must be an int, got 1.0"),
        ({"q": "Q?", "opts": ["a", "b"], "g": True}, "index", "gold of type index must be an int, got True"),
        ({"q": "Q?", "opts": ["a", "b"], "g": 1}, "letter", "gold of type letter must be text, got 1 (int)"),
        ({"q": "Q?", "opts": ["a", "b"], "g": 0, "id": 1.5}, "index", "id column 'id' must be text or an int, got 1.5"),
        ({"q": "Q?", "opts": ["only"], "g": 0}, "index", "has only one choice ['only']"),
        ({"q": "  ", "opts": ["a", "b"], "g": 0}, "index", "empty context"),
    ],
    ids=["float-choice", "float-gold", "bool-gold", "int-letter", "float-id", "one-choice", "empty-context"],
)
def test_json_values_of_the_wrong_type_or_degenerate_rows_are_rejected(tmp_path: Path, row: dict, gold_type: str,
                                                                        needle: str) -> None:
    import json

    from polar_rl.tasks import TaskError, load_task

    (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n")
    spec = {"name": "s", "source": {"path": str(tmp_path / "s.jsonl")}, "context": "{q}",
            "choices": {"column": "opts"}, "gold": {"column": "g", "type": gold_type}, "choice_prefix": ""}
    if "id" in row:
        spec["id_column"] = "id"
    with pytest.raises(TaskError) as err:
        load_task(spec, "all")
    assert needle in str(err.value)


def test_contradictory_budget_is_refused_up_front(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    """The defect: always_execute of 3 of 4 blocks with max_compute_fraction 0.5 ran at compute 1.0."""
    code, _, err = _cli(capsys, "train", *TINY_ARGS, "--model.name", tiny_dir, "--output_dir", tmp_path / "out",
                        "--env.always_execute", "[0, 1, 2]", "--env.max_compute_fraction", "0.5")
    assert code == 2
    line = _one_error_line(err)
    assert "always_execute=[0, 1, 2] forces 3 of 4 blocks" in line and "max_compute_fraction=0.5" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["train_split", "eval_split"])
def test_selecting_on_the_test_split_is_refused(tmp_path: Path, capsys, key: str) -> None:
    """Contradictory settings: a best checkpoint picked on the split that is reported."""
    code, _, err = _cli(capsys, "train", "--output_dir", tmp_path / "out", f"--task.{key}", "test")
    assert code == 2
    line = _one_error_line(err)
    assert f"task.{key} and task.test_split are both 'test'" in line
    assert not (tmp_path / "out").exists()


def test_resume_keeps_the_recorded_best_and_survives_a_damaged_best_model(killed_run: Path, capsys) -> None:
    """best_model.json records the score of best_model.zip (a resume's truncation can drop its metrics line);
    a damaged best_model.zip at the end costs a warning, not the finished run."""
    import json

    info = json.loads((killed_run / "best_model.json").read_text())
    assert info["metric"] == "eval/score" and info["step"] in (64, 128, 192)
    (killed_run / "best_model.json").write_text(json.dumps({**info, "value": 99.0}))  # nothing will beat it
    (killed_run / "best_model.zip").write_bytes(b"PK\x03\x04 damaged")
    code, out, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 0, err
    assert (killed_run / "best_model.zip").read_bytes() == b"PK\x03\x04 damaged"  # not replaced by a worse one
    assert "evaluating the final model instead" in out
    assert json.loads((killed_run / "eval.json").read_text())["policy_checkpoint"] == "model.zip"


def test_resumed_run_ends_with_the_uninterrupted_model(killed_run: Path, finished_run: Path, capsys) -> None:
    """A run killed after its checkpoint at 128 steps and resumed ends with the same policy as the
    uninterrupted run of the same seed (episodes end on rollout boundaries here: 4 blocks, 16 steps)."""
    import torch
    from sb3_contrib import MaskablePPO

    code, _, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 0, err
    resumed = MaskablePPO.load(killed_run / "model.zip", device="cpu").policy.state_dict()
    straight = MaskablePPO.load(finished_run / "model.zip", device="cpu").policy.state_dict()
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"id": "a", "q": "Q?", "opts": ["only"], "g": 0}, "example 'd/a' has only one choice [' only']"),
        ({"id": "a", "q": "", "opts": ["x", "y"], "g": 0}, "example 'd/a': empty context ''"),
        ({"id": "a", "q": "Q?", "opts": ["x", "y"], "g": 1.0}, "gold of type index must be an int, got 1.0"),
    ],
    ids=["one-choice", "empty-context", "float-gold"],
)
def test_bad_task_data_is_one_error_before_anything_is_written(tmp_path: Path, capsys, row: dict,
                                                               needle: str) -> None:
    """Through the CLI: exit 2, one line naming the value, no run folder."""
    import json

    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "d.yaml").write_text("name: d\nsource: {path: d.jsonl}\nid_column: id\ncontext: '{q}'\n"
                                     "choices: {column: opts}\ngold: {column: g, type: index}\n"
                                     "splits: {train: 0.34, val: 0.33, test: 0.33}\n")
    code, _, err = _cli(capsys, "train", "--task.name", tmp_path / "d.yaml", "--output_dir", tmp_path / "out")
    assert code == 2
    line = _one_error_line(err)
    assert needle in line
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_train_split_whose_data_changed(killed_run: Path, tmp_path: Path, capsys) -> None:
    """The checkpoint's example order indexes into the train split: edited data under the same task name
    is refused (not mistaken for a damaged checkpoint, not resumed on other questions)."""
    import json

    rows = [json.loads(line) for line in (REPO / "tests" / "data" / "example_mc.jsonl").read_text().splitlines()]
    spec = EXAMPLE_SPEC.read_text().replace("../../tests/data/example_mc.jsonl", "example_mc.jsonl")
    (tmp_path / "spec.yaml").write_text(spec)
    config = (killed_run / "config.yaml").read_text().replace(str(EXAMPLE_SPEC), str(tmp_path / "spec.yaml"))
    (killed_run / "config.yaml").write_text(config)

    before = (killed_run / "metrics.jsonl").read_text()
    for r in rows:  # the same questions with other gold answers
        r["answerKey"] = "A" if r["answerKey"] != "A" else "B"
    (tmp_path / "example_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _cli(capsys, "train", "--resume", killed_run)
    assert code == 2
    line = _one_error_line(err)
    assert "train split of task" in line and "changed since the run started" in line
    assert (killed_run / "metrics.jsonl").read_text() == before and not (killed_run / "eval.json").exists()


def test_static_programs_reuse_known_records_and_match_a_fresh_rollout(tiny_lm, monkeypatch) -> None:
    """The evaluation hands the policy's records to the static programs: an example whose program the
    policy already ran is not run again, and every record equals one computed alone."""
    import polar_rl.envs.rollout as ro

    task = _task(_examples())
    L = tiny_lm.num_layers
    programs = {"skip_0": [0] + [1] * (L - 1), "loop_last": [1] * (L - 1) + [2]}
    engine = LockstepEngine(tiny_lm, task, EnvConfig(block_size=1, n_envs=3), shuffle=False)
    fresh, _ = ro.rollout_programs(engine, programs)
    known = {(rec["example_id"], tuple(programs["skip_0"])): rec for rec in fresh["skip_0"][1:3]}

    ran: list[tuple[tuple[int, ...], list[str]]] = []
    run_chunk = ro.run_chunk

    def spy(engine, policy, examples):
        infos = run_chunk(engine, policy, examples)
        ran.append((tuple(infos[0]["runs"]), [ex.id for ex in examples]))
        return infos
    monkeypatch.setattr(ro, "run_chunk", spy)
    got, seconds = ro.rollout_programs(engine, programs, known=known)
    assert set(got) == set(seconds) == set(programs)
    for name in programs:  # other batch compositions: equal up to float rounding
        for a, b in zip(got[name], fresh[name], strict=True):
            assert {k: v for k, v in a.items() if k != "margin" and k != "reward_task"} == \
                {k: v for k, v in b.items() if k != "margin" and k != "reward_task"}
            assert a["margin"] == pytest.approx(b["margin"], abs=1e-5)
    skip_runs = tuple(programs["skip_0"])
    skip_ids = sorted(i for runs, ids in ran if runs == skip_runs for i in ids)
    assert skip_ids == ["toy/q0", "toy/q3"]  # q1 and q2 came from ``known``
    loop_ids = sorted(i for runs, ids in ran if runs != skip_runs for i in ids)
    assert loop_ids == [f"toy/q{i}" for i in range(4)]


def test_evaluation_shares_work_between_methods_and_matches_each_method_alone(tiny_lm, monkeypatch) -> None:
    """evaluate_methods runs the policy and the budget's static programs chunk by chunk (the full
    model's prefixes are cache hits for both) and reuses records across methods: every method's records
    equal those of the method run alone, for fewer layer calls than running each alone."""
    from polar_rl.agents.algorithms import make_algorithm
    from polar_rl.agents.evaluate import evaluate_methods, static_env
    from polar_rl.config_sources import load_config
    from polar_rl.envs import LayerProgramVecEnv
    from polar_rl.envs.rollout import constant_policy, rollout, sb3_policy
    from polar_rl.search.families import search_static_programs

    examples = [MCExample(f"toy/q{i}", f"Question: what comes after {i} and {i * 3}?\nAnswer:",
                          (f" {i + 1}", f" {i + 7}", " no"), i % 3) for i in range(7)]
    task = _task(examples)
    cfg = load_config(overrides=["--env.block_size", "1", "--env.n_envs", "3", "--env.max_compute_fraction", "0.75",
                                 "--agent.n_steps", "8", "--agent.batch_size", "8", "--agent.net_arch", "[8]",
                                 "--agent.init_action_probs", "[0.3, 0.65, 0.05]", "--baselines.neighbours", "0",
                                 "--baselines.families", "[bi,skip_rank,greedy]"])
    found = search_static_programs(tiny_lm, examples, task="toy", split="test", min_compute=0.5)
    model = make_algorithm(cfg, LayerProgramVecEnv(tiny_lm, task, config=cfg.env, n_envs=3, seed=0), seed=0)

    rows = []
    run_layer = tiny_lm.run_layer
    monkeypatch.setattr(tiny_lm, "run_layer", lambda layer, h, inputs: rows.append(h.shape[0]) or run_layer(layer, h, inputs))
    result, records = evaluate_methods(tiny_lm, cfg, model, task, {}, show_progress=False, baselines=found)
    shared_rows = sum(rows)

    by_method: dict[str, list[dict]] = {}
    for rec in records:
        by_method.setdefault(rec["method"], []).append(rec)
    assert {"full", "policy", "policy_static", "bi_1", "skip_rank_1", "greedy_1"} <= set(by_method)
    rows.clear()
    alone_engine = LockstepEngine(tiny_lm, task, cfg.env.replace(prefix_cache_gb=0.0), n_envs=3, shuffle=False)
    want = {"policy": rollout(alone_engine, sb3_policy(model))[0]}
    free = LockstepEngine(tiny_lm, task, static_env(cfg.env).replace(prefix_cache_gb=0.0), n_envs=3, shuffle=False,
                          reference=alone_engine.reference)
    for name, m in result["methods"].items():
        if name != "policy":
            actions = [{"-": 0, "x": 1}.get(c, 2) for c in m["program"]]
            want[name] = rollout(free, constant_policy(actions))[0]
    assert shared_rows < sum(rows)  # the same records for less work
    for name, recs in by_method.items():
        assert [r["example_id"] for r in recs] == [ex.id for ex in examples]
        assert [r["correct"] for r in recs] == [w["correct"] for w in want[name]], name
        assert [r["layer_calls"] for r in recs] == [w["layer_calls"] for w in want[name]], name
        np.testing.assert_allclose([r["margin"] for r in recs], [w["margin"] for w in want[name]], atol=1e-5)
