"""Trust, round two, for ``polar-rl export`` and ``polar-rl generate`` (issue 20).

One test per defect class, on a tiny local model and an untrained policy saved as a run folder's
``best_model.zip``: each asserts the exit status, that the message names the bad value, and what is
and is not left on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from polar_rl.config import Config
from tests.agents.helpers import tiny_model_dir

AGENT = {"net_arch": [16], "n_steps": 8, "batch_size": 8}
ENV = {"block_size": 1, "loop_runs": 2, "n_envs": 2, "obs_pooled": True, "always_execute": [0],
       "max_compute_fraction": 1.25, "prefix_cache_gb": 0.0}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder (never the user's)."""
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tinymodel")


@pytest.fixture(scope="module")
def run_template(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished-looking run folder: config.yaml, best_model.zip (an untrained MaskablePPO on the
    tiny model), and the other files a run holds."""
    from sb3_contrib import MaskablePPO

    from polar_rl import load_model
    from polar_rl.config import EnvConfig
    from polar_rl.envs.vec_env import LayerProgramVecEnv
    from tests.serving.helpers import tiny_task

    run = tmp_path_factory.mktemp("template") / "runs" / "tiny__run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = Config.from_dict({"model": {"name": str(model_dir)}, "env": ENV, "agent": AGENT})
    (run / "config.yaml").write_text(cfg.to_yaml())
    venv = LayerProgramVecEnv(load_model(str(model_dir)), tiny_task("train"), config=EnvConfig(**ENV), seed=0)
    MaskablePPO("MlpPolicy", venv, n_steps=AGENT["n_steps"], batch_size=AGENT["batch_size"], seed=0, device="cpu",
                policy_kwargs={"net_arch": AGENT["net_arch"]}).save(run / "best_model.zip")
    for name in ("model.zip", "eval.json", "metrics.jsonl", "checkpoints/model_64_steps.zip"):
        (run / name).write_text(f"{name} of the finished run\n")
    return run


@pytest.fixture
def run(run_template: Path, tmp_path: Path) -> Path:
    """A private copy of the run folder, in a runs/ folder beside a second run."""
    import shutil

    run = tmp_path / "runs" / run_template.name
    shutil.copytree(run_template, run)
    shutil.copytree(run_template, tmp_path / "runs" / "other__run")
    return run


@pytest.fixture(scope="module")
def export_dir(run_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the template run, outside it."""
    from polar_rl.agents import cli

    out = tmp_path_factory.mktemp("exported") / "export"
    assert cli.main(["export", str(run_template), "--out", str(out)]) == 0
    return out


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Exit status and the one error line (anything else on stderr fails the test)."""
    from polar_rl.agents import cli

    code = cli.main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) <= 1, err
    return code, err[0] if err else ""


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- 1. --force replaces an export and nothing else ------------------------------------------


def _not_an_export(run: Path, kind: str) -> Path:
    """A folder or file that ``--force`` must never replace."""
    target = {"run folder": run, "runs folder": run.parent, "a run's subfolder": run / "checkpoints",
              "file": run.parent / "notes.txt", "user folder": run.parent / "mine",
              "fake manifest": run.parent / "fake", "export with a subfolder": run.parent / "nested",
              "archive of runs": run.parent / "archive"}[kind]
    if kind == "file":
        target.write_text("my notes\n")
    elif kind == "user folder":
        target.mkdir()
        (target / "thesis.tex").write_text("months of work\n")
    elif kind == "fake manifest":
        target.mkdir()
        (target / "manifest.json").write_text('{"name": "not an export"}\n')
    elif kind == "archive of runs":
        (target / "old__run").mkdir(parents=True)
        (target / "old__run" / "config.yaml").write_text("seed: 0\n")
    elif kind == "export with a subfolder":
        target.mkdir()
        (target / "manifest.json").write_text('{"format_version": 1, "model": {}, "policy": {}, "observation": {}}\n')
        (target / "data").mkdir()
        (target / "data" / "keep.txt").write_text("keep\n")
    return target


@pytest.mark.parametrize("kind", ["run folder", "runs folder", "a run's subfolder", "file", "user folder",
                                  "fake manifest", "export with a subfolder", "archive of runs"])
def test_force_replaces_only_an_export_folder(run: Path, capsys, kind: str) -> None:
    target = _not_an_export(run, kind)
    before = _snapshot(run.parent)
    code, err = _cli(capsys, "export", run, "--out", target, "--force")
    assert code == 2 and err.startswith("polar-rl export: error:")
    assert f"--out {target} " in err
    assert _snapshot(run.parent) == before  # nothing deleted, nothing added (no temp folder either)


def test_force_replaces_an_earlier_export_and_an_empty_folder_is_reused(run: Path, capsys) -> None:
    empty = run.parent / "empty"
    empty.mkdir()
    assert _cli(capsys, "export", run, "--out", empty, "--format", "torchscript") == (0, "")
    code, err = _cli(capsys, "export", run, "--out", empty, "--format", "torchscript")
    assert code == 2 and "holds an export already; pass --force" in err
    assert _cli(capsys, "export", run, "--out", empty, "--format", "torchscript", "--force")[0] == 0
    assert sorted(p.name for p in empty.iterdir()) == ["manifest.json", "policy.pt"]
    assert (run / "best_model.zip").is_file() and (run / "eval.json").is_file()


# ---- 2. folders the project swaps in get the user's umask ------------------------------------


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_export_and_swapped_in_folders_get_the_umask(run: Path, tmp_path: Path, capsys) -> None:
    from polar_rl.fileio import replace_folder, temp_folder, write_text_atomic

    out = tmp_path / "served" / "export"
    with _umask(0o027):
        assert _cli(capsys, "export", run, "--out", out, "--format", "torchscript")[0] == 0
        cache = temp_folder(tmp_path / "models" / "tiny")  # as the model cache swaps in a converted copy
        write_text_atomic(cache / "polar_rl_manifest.json", "{}\n")
        replace_folder(cache, tmp_path / "models" / "tiny")
    assert _mode(out) == 0o750, oct(_mode(out))
    assert {p.name: _mode(p) for p in out.iterdir()} == {"manifest.json": 0o640, "policy.pt": 0o640}
    assert _mode(tmp_path / "models" / "tiny") == 0o750
    assert _mode(tmp_path / "models" / "tiny" / "polar_rl_manifest.json") == 0o640


# ---- 5. inputs the model cannot take -----------------------------------------------------------


def test_generate_refuses_inputs_the_model_cannot_take(export_dir: Path, model_dir: Path, capsys,
                                                      monkeypatch) -> None:
    from polar_rl.models.adapter import LayerModel

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a layer ran for an input that was refused")

    monkeypatch.setattr(LayerModel, "run_layer", forbidden)
    args = ["generate", "--export", export_dir]  # the manifest's model spec is the folder's absolute path
    code, err = _cli(capsys, *args, "--prompt", "Hi", "--max-new-tokens", "100000")
    assert code == 2
    assert "prompt (2 tokens) + max_new_tokens 100,000 = 100,002 positions" in err and "at most 1,024" in err
    code, err = _cli(capsys, *args, "--prompt", "")
    assert code == 2 and "the prompt '' encodes to no tokens" in err


# ---- 6. a disk that fills up during an export ------------------------------------------------


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_policy_write(monkeypatch: pytest.MonkeyPatch) -> None:
    from polar_rl.agents import export

    def half_written(net: object, dim: int, path: Path) -> None:
        path.write_bytes(b"half a policy")
        _full()

    monkeypatch.setattr(export, "_export_torchscript", half_written)


def _fail_manifest_write(monkeypatch: pytest.MonkeyPatch) -> None:
    from polar_rl.agents import export
    from polar_rl.fileio import atomic_open

    def write(path: Path, text: str) -> Path:
        with atomic_open(path) as f:
            f.write(text[:10])
            _full()
        return path

    monkeypatch.setattr(export, "write_text_atomic", write)


def _fail_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    rename = Path.rename

    def fail_new_folder(self: Path, target: str | Path) -> Path:
        if self.name.endswith(".tmp"):  # the finished temporary folder moving into place
            _full()
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_new_folder)


@pytest.mark.parametrize("fault", [_fail_policy_write, _fail_manifest_write, _fail_swap],
                         ids=["policy file", "manifest", "final rename"])
def test_disk_full_during_export_is_one_line_and_keeps_the_old_export(run: Path, capsys, monkeypatch, fault) -> None:
    out = run / "export"
    assert _cli(capsys, "export", run, "--format", "torchscript")[0] == 0
    before = _snapshot(run)
    fault(monkeypatch)
    code, err = _cli(capsys, "export", run, "--format", "torchscript", "--force")
    assert code == 2
    assert f"cannot write the export {out}" in err and "No space left on device" in err
    assert _snapshot(run) == before  # the old export intact, nothing half-written beside it
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left
