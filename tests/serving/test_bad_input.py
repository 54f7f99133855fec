"""Bad export folders and models: each a clear one-line error (exit 2 from the CLI), never a pickle."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polar_rl.agents import cli
from polar_rl.serving import PolarRunner, ServingError
from polar_rl.serving.manifest import sha256_file
from tests.serving.helpers import tiny_lm


@pytest.fixture
def copy(tmp_path: Path, export_dir: Path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    return out


def _edit(folder: Path, fn) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def _load_error(folder: Path, lm, **kw) -> str:
    with pytest.raises(ServingError) as e:
        PolarRunner.load(folder, lm, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_folder_and_files(tmp_path: Path, copy: Path, lm) -> None:
    assert "does not exist" in _load_error(tmp_path / "nowhere", lm)
    (copy / "policy.onnx").unlink()
    assert "policy.onnx is missing" in _load_error(copy, lm)
    assert PolarRunner.load(copy, lm, backend="torchscript").program_for(
        __import__("torch").tensor([[5, 6, 7]]))  # the other format still serves
    (copy / "manifest.json").unlink()
    assert "manifest.json is missing" in _load_error(copy, lm)


def test_newer_format_version(copy: Path, lm) -> None:
    _edit(copy, lambda m: m.update(format_version=2))
    msg = _load_error(copy, lm)
    assert "format_version 2 is newer" in msg and "(1)" in msg


def test_unknown_observation_layout(copy: Path, lm) -> None:
    _edit(copy, lambda m: m["observation"].update(featuriser="polar_rl.observation/v9"))
    assert "featuriser 'polar_rl.observation/v9' is unknown" in _load_error(copy, lm)
    _edit(copy, lambda m: m["observation"].update(featuriser="polar_rl.observation/v1"))
    _edit(copy, lambda m: m["observation"]["layout"].insert(0, ["attention_entropy", 0, 8]))
    assert "is not what this runtime builds" in _load_error(copy, lm)
    _edit(copy, lambda m: m["observation"]["spec"].update(attention_entropy=True))
    assert "fields this runtime does not know: ['attention_entropy']" in _load_error(copy, lm)


def test_corrupt_onnx(copy: Path, lm) -> None:
    data = (copy / "policy.onnx").read_bytes()
    (copy / "policy.onnx").write_bytes(data[: len(data) // 2])
    assert "policy.onnx is corrupt or replaced: sha256" in _load_error(copy, lm)
    digest = sha256_file(copy / "policy.onnx")  # a corrupt file the manifest vouches for
    _edit(copy, lambda m: m["policy"]["files"]["onnx"].update(sha256=digest))
    assert "is not a valid ONNX model" in _load_error(copy, lm)


def test_model_mismatch_names_both_values(export_dir: Path, lm) -> None:
    other = tiny_lm(model_hash="otherhash")
    msg = _load_error(export_dir, other)
    assert "'otherhash'" in msg and "'tinyhash'" in msg and "allow_model_mismatch" in msg
    assert PolarRunner.load(export_dir, other, allow_model_mismatch=True).num_blocks == 4
    msg = _load_error(export_dir, tiny_lm(num_layers=2), allow_model_mismatch=True)
    assert "num_layers=2" in msg and "num_layers=4" in msg


def test_cli_errors_exit_2(tmp_path: Path, copy: Path, capsys) -> None:
    assert cli.main(["generate", "--export", str(tmp_path / "nowhere"), "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
    _edit(copy, lambda m: m.update(format_version=7))
    assert cli.main(["generate", "--export", str(copy), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polar-rl generate: error:") and "format_version 7" in err and len(err.splitlines()) == 1
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_failed_export_leaves_no_folder(tmp_path: Path, lm, cfg, policy, monkeypatch) -> None:
    from polar_rl.agents import export

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export, "_export_torchscript", broken)
    with pytest.raises(RuntimeError):
        export.export_policy(policy, lm, cfg, tmp_path / "out", ("onnx", "torchscript"))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


def test_serving_needs_no_sb3_gymnasium_or_wandb(export_dir: Path) -> None:
    """In a fresh interpreter where those packages cannot be imported, serving still loads and generates."""
    code = textwrap.dedent(f"""
        import sys
        BLOCKED = ("stable_baselines3", "sb3_contrib", "gymnasium", "wandb")
        for name in BLOCKED:  # as if not installed: import raises, find_spec answers None
            sys.modules[name] = None
        import torch
        from polar_rl.serving import PolarRunner
        from tests.serving.helpers import tiny_lm
        runner = PolarRunner.load({str(export_dir)!r}, tiny_lm())
        out = runner.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3)
        assert out.sequences.shape == (1, 7)
        loaded = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None)
        assert not loaded, loaded
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_serving_imports_no_sb3_or_wandb() -> None:
    """With everything installed, importing serving loads neither SB3 nor W&B."""
    code = ("import sys, polar_rl.serving, polar_rl.agents.generate; "
            "print(sorted(m for m in ('stable_baselines3', 'sb3_contrib', 'wandb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_serving_never_unpickles() -> None:
    root = Path(__file__).resolve().parents[2] / "polar_rl" / "serving"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"import (c?pickle|dill|joblib)|pickle\.loads?\(|torch\.load\(", text), path
