"""Untrusted files are data, never code (issue 20, section 2).

A model zip's pickled ``data`` entries, a ``.pth`` member and a legacy pickled RNG file each get a
payload whose unpickling writes a marker file, planted where evaluate, export and ``train --resume``
look. The marker must never appear; a refusal is one line naming the file. What the project writes
itself (the checkpoint RNG state) is plain JSON.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polar_rl.agents.algorithms import DamagedModelError, ForeignModelError, load_algorithm
from polar_rl.agents.callbacks import load_rng, state_from_json, state_to_json
from polar_rl.agents.run_dir import checkpoint_paths, legacy_rng_path, list_checkpoints
from tests.agents.helpers import REPO, tiny_model_dir

EXAMPLE_SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"
TINY_ARGS = ["--config", "configs/smoke.yaml", "--task.name", str(EXAMPLE_SPEC), "--env.block_size", "1",
             "--training.total_timesteps", "192", "--training.checkpoint_freq", "64", "--training.eval_freq", "64",
             "--training.progress_bar", "false", "--baselines.search_limit", "4"]


class Payload:
    """Unpickled, this writes ``path`` (the stand-in for the crafted file's ``os.system``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tinymodel")


@pytest.fixture
def cli(finished_run: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """``polar-rl ARGS`` in this process (the finished run's cache, never the user's): code, stdout, stderr."""
    from polar_rl.agents import cli as cli_module

    monkeypatch.setenv("POLAR_RL_CACHE", str(finished_run.parents[1] / "cache"))

    def run(*args: Any) -> tuple[int, str, str]:
        code = cli_module.main([*map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def cfg(finished_run: Path):
    from polar_rl.config_sources import load_config

    return load_config(finished_run / "config.yaml")


@pytest.fixture(scope="module")
def lm(tiny_dir: Path):
    from polar_rl import load_model

    return load_model(str(tiny_dir))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, err
    return lines[0]


def _rewrite(src: Path, dst: Path, members: dict[str, bytes]) -> Path:
    """A copy of the zip ``src`` with ``members`` (name -> bytes) replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, members.get(name, zin.read(name)))
    return dst


def _planted_data(src: Path, dst: Path, marker: Path, **extra: Any) -> Path:
    """``src`` with every pickled (``:serialized:``) entry of its ``data`` member replaced by the payload."""
    import cloudpickle

    evil = base64.b64encode(cloudpickle.dumps(Payload(marker))).decode()
    with zipfile.ZipFile(src) as z:
        data = json.loads(z.read("data"))
    planted = {k: ({**v, ":serialized:": evil} if isinstance(v, dict) and ":serialized:" in v else v)
               for k, v in data.items()}
    planted.update({k: {":type:": "<class 'object'>", ":serialized:": evil} for k in extra})
    assert sum(isinstance(v, dict) and ":serialized:" in v for v in planted.values()) >= 8
    return _rewrite(src, dst, {"data": json.dumps(planted).encode()})


def _same_policy(a: Any, b: Any) -> None:
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- what the project writes: JSON ---------------------------------------------------------------


def test_checkpoint_rng_state_is_json_and_round_trips_exactly(finished_run: Path) -> None:
    import random

    state_file = checkpoint_paths(finished_run, 64)[1]
    assert state_file.name == "rl_model_rng_64_steps.json"
    raw = json.loads(state_file.read_text())  # plain JSON: readable without this code, nothing to unpickle
    assert {"python", "numpy", "torch", "engine_sampler", "ep_info_buffer", "train_examples"} <= set(raw)
    state = load_rng(state_file)
    assert isinstance(state["python"], tuple) and state["numpy"][1].dtype == np.uint32
    assert state["torch"].dtype == torch.uint8 and state["ep_info_buffer"]
    assert type(state["ep_info_buffer"][0]["r"]) is np.float32  # as SB3 keeps it: the logged means match
    live: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    back = state_from_json(json.loads(json.dumps(state_to_json(live))))
    assert back["python"] == live["python"] and torch.equal(back["torch"], live["torch"])
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(back["numpy"], live["numpy"], strict=True))
    for bad in ({"$ndarray": [1], "dtype": "|O", "shape": [1]}, {"$code": "print(1)"}):
        with pytest.raises(ValueError):
            state_from_json(bad)


# ---- model zips: loaded as data ----------------------------------------------------------------


def test_load_algorithm_equals_sb3_load_without_unpickling(finished_run: Path, cfg, lm,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights, optimizer state, counters, schedules and actions as SB3's own (pickling) load."""
    import stable_baselines3.common.save_util as save_util
    from sb3_contrib import MaskablePPO

    path = checkpoint_paths(finished_run, 128)[0]
    theirs = MaskablePPO.load(path, device="cpu")

    def refuse(*_: Any) -> None:
        raise AssertionError("cloudpickle.loads called")

    monkeypatch.setattr(save_util.cloudpickle, "loads", refuse)
    ours = load_algorithm(cfg, path, lm)
    _same_policy(ours, theirs)
    opt_a, opt_b = ours.policy.optimizer.state_dict(), theirs.policy.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert all(torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]) for i in opt_b["state"] for k in opt_b["state"][i])
    for key in ("num_timesteps", "_n_updates", "_current_progress_remaining", "n_steps", "batch_size", "n_epochs",
                "observation_space", "action_space"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.lr_schedule(0.3) == theirs.lr_schedule(0.3)
    assert ours.clip_range(0.3) == theirs.clip_range(0.3)  # type: ignore[operator]  # a schedule once set up
    obs = np.random.default_rng(0).uniform(-3, 3, (32, *ours.observation_space.shape)).astype(np.float32)
    masks = np.random.default_rng(1).random((32, 3)) > 0.3
    masks[:, 1] = True
    assert np.array_equal(ours.predict(obs, deterministic=True, action_masks=masks)[0],
                          theirs.predict(obs, deterministic=True, action_masks=masks)[0])


def test_crafted_data_pickles_never_run(finished_run: Path, cfg, lm, marker: Path, tmp_path: Path) -> None:
    from sb3_contrib import MaskablePPO

    planted = _planted_data(finished_run / "best_model.zip", tmp_path / "planted.zip", marker)
    with pytest.raises(Exception):  # noqa: B017 - the control: SB3 itself runs the payload
        MaskablePPO.load(planted, device="cpu")
    assert marker.read_text() == "ran"
    marker.unlink()

    model = load_algorithm(cfg, planted, lm)  # every pickled entry is rebuilt from the config: it loads
    assert not marker.exists()
    _same_policy(model, load_algorithm(cfg, finished_run / "best_model.zip", lm))

    unknown = _planted_data(finished_run / "best_model.zip", tmp_path / "unknown.zip", marker, evil=None)
    with pytest.raises(ForeignModelError) as e:
        load_algorithm(cfg, unknown, lm)
    assert not marker.exists()
    assert str(unknown) in str(e.value) and "it holds evil" in str(e.value) and "\n" not in str(e.value)


def test_crafted_pth_member_never_runs(finished_run: Path, cfg, lm, marker: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # the control: a plain torch.load runs it
    assert marker.read_text() == "ran"
    marker.unlink()

    for member in ("policy.pth", "pytorch_variables.pth", "policy.optimizer.pth"):
        planted = _rewrite(finished_run / "model.zip", tmp_path / f"{member}.zip", {member: buf.getvalue()})
        with pytest.raises(DamagedModelError) as e:
            load_algorithm(cfg, planted, lm)
        assert not marker.exists()
        assert str(e.value).startswith(f"cannot load the model {planted}: damaged") and "\n" not in str(e.value)


def test_cli_never_runs_a_crafted_zip(finished_run: Path, cli, marker: Path, tmp_path: Path) -> None:
    """export loads a zip whose pickles are all payloads (rebuilt, so it exports); evaluate refuses one
    with a payload in a .pth member in one line; neither runs the payload."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _planted_data(finished_run / "best_model.zip", run / "best_model.zip", marker)
    code, out, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "export")
    assert code == 0, err
    assert not marker.exists() and (tmp_path / "export" / "manifest.json").is_file()

    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    bad = _rewrite(finished_run / "best_model.zip", tmp_path / "bad.zip", {"policy.pth": buf.getvalue()})
    before = sorted(p.name for p in run.iterdir())
    code, _, err = cli("evaluate", run, "--checkpoint", bad, "--split", "val")
    assert code == 2 and not marker.exists()
    line = _one_line(err)
    assert f"cannot load the model {bad}: damaged" in line and "UnpicklingError" in line
    assert sorted(p.name for p in run.iterdir()) == before


def _foreign_zip(cfg, lm, path: Path, **changes: Any) -> Path:
    """A fresh (untrained) policy saved by ``cfg`` with ``changes`` (section -> field -> value)."""
    from polar_rl.agents.algorithms import make_algorithm
    from polar_rl.envs.vec_env import LayerProgramVecEnv
    from polar_rl.tasks import load_task

    other = cfg.replace(**{s: getattr(cfg, s).replace(**f) for s, f in changes.items()})
    venv = LayerProgramVecEnv(model=lm, task=load_task(str(EXAMPLE_SPEC), "train"), config=other.env, n_envs=2, seed=0)
    make_algorithm(other, venv, 0).save(path)
    return path


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"env": {"block_size": 2}}, "takes observations of shape (27,) (float32), but tinymodel with "
                                     "env.block_size=1 gives (29,)"),
        ({"agent": {"algo": "a2c"}}, "not a MaskablePPO policy of this run (agent.algo='maskable_ppo'): it lacks "),
        ({"agent": {"algo": "ppo"}}, "its policy comes from stable_baselines3.common.policies"),
        ({"agent": {"net_arch": [8]}}, "its net_arch [8] is not agent.net_arch [64, 64]"),
    ],
    ids=["observation-shape", "a2c", "ppo", "net-arch"],
)
def test_foreign_checkpoint_is_one_error(finished_run: Path, cfg, lm, cli, tmp_path: Path, changes: dict,
                                         needle: str) -> None:
    """The defect: evaluate --checkpoint on another algorithm's or shape's zip gave an SB3 traceback."""
    foreign = _foreign_zip(cfg, lm, tmp_path / "foreign.zip", **changes)
    code, _, err = cli("evaluate", finished_run, "--checkpoint", foreign, "--split", "val")
    assert code == 2
    line = _one_line(err)
    assert f"cannot load the model {foreign}: " in line and needle in line
    assert not (finished_run / "eval_val.json").exists()


# ---- checkpoints: legacy pickles are never loaded, resumes stay exact -------------------------------


def test_legacy_rng_pickle_is_never_loaded(killed_run: Path, cli, marker: Path) -> None:
    """A checkpoint with only a legacy .pkl RNG file counts as one without RNG state (skipped, named)."""
    for steps in (64, 128):
        json_file = checkpoint_paths(killed_run, steps)[1]
        json_file.rename(json_file.with_suffix(".keep"))
        legacy_rng_path(killed_run, steps).write_bytes(pickle.dumps(Payload(marker)))
    assert list_checkpoints(killed_run) == []
    before = (killed_run / "metrics.jsonl").read_text()
    code, _, err = cli("train", "--resume", killed_run)
    assert code == 2 and not marker.exists()
    line = _one_line(err)
    assert "no checkpoint in" in line and "rl_model_rng_64_steps.pkl, rl_model_rng_128_steps.pkl: legacy" in line
    assert (killed_run / "metrics.jsonl").read_text() == before

    kept = checkpoint_paths(killed_run, 64)[1]
    kept.with_suffix(".keep").rename(kept)  # 64 has its JSON state again: the resume falls back to it
    code, out, err = cli("train", "--resume", killed_run)
    assert code == 0, err
    assert not marker.exists()
    warning = [ln for ln in out.splitlines() if "legacy pickled" in ln]
    assert warning == ["warning: rl_model_rng_128_steps.pkl: legacy pickled RNG state, never loaded (a pickle can "
                       "run code); that checkpoint counts as without RNG state"]
    assert "from rl_model_64_steps.zip (64 steps)" in out and (killed_run / "eval.json").is_file()


def test_resumed_run_logs_and_ends_like_the_uninterrupted_run(killed_run: Path, finished_run: Path, cli,
                                                              cfg, lm) -> None:
    """The episode buffers SB3 pickled into the zip come back from the JSON state: the episode means
    logged after the resume (over the last 100 episodes, most from before it), the last update's
    train/ values and the final weights equal the uninterrupted run's."""
    code, _, err = cli("train", "--resume", killed_run)
    assert code == 0, err

    def rows(run: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def episodes(run: Path) -> list[tuple[int, float, float]]:
        return [(r["step"], r["rollout/ep_rew_mean"], r["rollout/ep_len_mean"]) for r in rows(run)
                if "rollout/ep_rew_mean" in r]

    assert [step for step, *_ in episodes(finished_run)] == [64, 128, 192]
    assert episodes(killed_run) == episodes(finished_run)
    last = {k: v for k, v in rows(finished_run)[-1].items() if k.startswith("train/")}
    assert last and last.items() <= rows(killed_run)[-1].items()
    _same_policy(load_algorithm(cfg, killed_run / "model.zip", lm), load_algorithm(cfg, finished_run / "model.zip", lm))
