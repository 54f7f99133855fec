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
import torch

from polar_rl.agents import cli
from polar_rl.config import ConfigError
from polar_rl.fileio import sha256
from polar_rl.serving import PolarRunner, ServingError
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
    digest = sha256(copy / "policy.onnx")  # a corrupt file the manifest vouches for
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


# ---- issue 20: crafted export folders and inputs the model cannot take ---------------------


def _planted(tmp_path: Path, export_dir: Path) -> tuple[Path, Path]:
    """A copy of the export at tmp/exports/export and a working policy outside it, at tmp/outside."""
    folder = tmp_path / "exports" / "export"
    shutil.copytree(export_dir, folder)
    (tmp_path / "outside").mkdir()
    evil = shutil.copy(export_dir / "policy.onnx", tmp_path / "outside" / "evil.onnx")
    return folder, Path(evil)


@pytest.mark.parametrize("name", ["../../outside/evil.onnx", "ABSOLUTE", "outside/evil.onnx", "..", "", 7, "LINK"])
def test_manifest_files_are_plain_names_inside_the_folder(tmp_path: Path, export_dir: Path, lm, monkeypatch,
                                                          name) -> None:
    from polar_rl.serving import policy

    folder, evil = _planted(tmp_path, export_dir)
    if name == "LINK":  # a plain name, but a link that leads out of the folder
        (folder / "policy.onnx").unlink()
        (folder / "policy.onnx").symlink_to(evil)
        name = "policy.onnx"
    name = str(evil) if name == "ABSOLUTE" else name
    _edit(folder, lambda m: m["policy"]["files"]["onnx"].update(file=name, sha256=sha256(evil)))

    def never(*args, **kwargs):
        raise AssertionError("a policy file was loaded")

    monkeypatch.setattr(policy, "OnnxPolicy", never)
    msg = _load_error(folder, lm)
    assert (repr(name) in msg and "not a plain file name inside the export folder" in msg) or \
        ("leads outside the export folder" in msg and str(evil) in msg), msg


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: m["observation"]["spec"].update(clip=10.0), "observation.spec.clip=10.0"),
    (lambda m: m["observation"]["spec"].update(hidden_size=99), "observation.spec.hidden_size=99"),
    (lambda m: m["masks"].update(max_compute_fraction=7.5), "max_compute_fraction (7.5) exceeds env.loop_runs (2)"),
    (lambda m: m["masks"].update(max_compute_fraction="1.25"), "'1.25'"),
    (lambda m: m["masks"].update(always_execute=[99]), "always_execute blocks [99] out of range 0..3"),
    (lambda m: m["masks"].update(always_execute=[-1]), "masks.always_execute: env.always_execute[0] must be >= 0, got -1"),
    (lambda m: m["masks"].update(always_execute=[0, 1, 2, 3], max_compute_fraction=0.5), "forces 4 of 4 blocks (compute fraction 1.000)"),
    (lambda m: m["masks"].update(num_layers=8), "masks {'num_layers': 8} disagree"),
    (lambda m: m["masks"].update(max_loops=-1), "masks.max_loops: env.max_loops must be >= 0, got -1"),
    (lambda m: (m["program"].update(block_size=3), m["masks"].update(block_size=3)), "block_size=3 does not divide"),
    (lambda m: (m["program"].update(loop_runs=1), m["masks"].update(loop_runs=1)), "program.loop_runs"),
    (lambda m: m["program"].update(num_blocks=5), "program.num_blocks=5"),
    (lambda m: m.update(compute_penalty=-1.0), "compute_penalty"),
    (lambda m: m["model"].update(hidden_size=True), "model.hidden_size must be a positive int, got True"),
    (lambda m: m["policy"].update(input_shape=["batch", 5]), "policy.input_shape=['batch', 5]"),
])
def test_manifest_values_are_checked_like_the_training_config(copy: Path, lm, edit, needle: str) -> None:
    _edit(copy, edit)
    msg = _load_error(copy, lm)
    assert needle in msg and str(copy / "manifest.json") in msg, msg


def _wrong_policy(folder: Path, backend: str, inputs: int, outputs: int) -> None:
    """Replace the backend's policy file by a working linear map (inputs -> outputs); the manifest vouches for it."""
    import torch

    net = torch.nn.Linear(inputs, outputs)
    path = folder / ("policy.onnx" if backend == "onnx" else "policy.pt")
    if backend == "onnx":
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        weight = numpy_helper.from_array(net.weight.detach().numpy().T.copy(), "W")
        graph = helper.make_graph([helper.make_node("MatMul", ["obs", "W"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", inputs])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])],
                                  [weight])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    else:
        torch.jit.trace(net, torch.zeros(2, inputs)).save(str(path))
    _edit(folder, lambda m: m["policy"]["files"][backend].update(sha256=sha256(path)))


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
@pytest.mark.parametrize("wrong", ["input", "output"])
def test_policy_shapes_are_checked_at_load_before_the_model(copy: Path, monkeypatch, backend: str, wrong: str) -> None:
    from polar_rl.models import loading

    dim = json.loads((copy / "manifest.json").read_text())["observation"]["dim"]
    _wrong_policy(copy, backend, dim + 1 if wrong == "input" else dim, 3 if wrong == "input" else 4)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the policy was checked")

    monkeypatch.setattr(loading, "load_model", never)
    msg = _load_error(copy, None, backend=backend)
    assert ("policy.onnx" if backend == "onnx" else "policy.pt") in msg
    assert (f"(batch, {dim})" in msg and str(dim + 1) in msg) if wrong == "input" else ("4" in msg and "3" in msg), msg


def _prompt(n: int) -> torch.Tensor:
    return torch.arange(n).remainder(90).add(5)[None]


@pytest.mark.parametrize(("call", "needle"), [
    (lambda r: r.generate(torch.tensor([[5, 6, 7], [0, 0, 0]]), 2, attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])),
     "row 1 of the batch is all padding"),
    (lambda r: r.generate_text("", 4), "the prompt '' encodes to no tokens"),
    (lambda r: r.generate(torch.zeros((1, 0), dtype=torch.long), 4), "at least one token, got shape (1, 0)"),
    (lambda r: r.generate(_prompt(3), 1000), "prompt (3 tokens) + max_new_tokens 1,000 = 1,003 positions"),
    (lambda r: r.generate(torch.cat([_prompt(5), _prompt(5)]), 124, attention_mask=torch.tensor([[0, 0, 1, 1, 1],
                                                                                                  [1] * 5])),
     "row 1: prompt (5 tokens) + max_new_tokens 124 = 129 positions"),
    (lambda r: r.program_for(_prompt(200)), "prompt (200 tokens) = 200 positions"),
    (lambda r: r.generate(_prompt(3), -1), "max_new_tokens must be an int >= 0, got -1"),
    (lambda r: r.score_choices("Q" * 120, [" yes", " no!!!!!!!!"]), "context (120 tokens) + longest choice (11 tokens) = 131 positions"),
    (lambda r: r.score_choices("", [" a", " b"]), "empty context ''"),
])
def test_prompts_the_model_cannot_take_are_refused_before_any_layer_runs(export_dir: Path, lm, monkeypatch, call,
                                                                         needle: str) -> None:
    runner = PolarRunner.load(export_dir, lm)

    def never(*args, **kwargs):
        raise AssertionError("the model ran on an input that should have been refused")

    monkeypatch.setattr(lm, "embed", never)
    monkeypatch.setattr(lm, "run_layer", never)
    with pytest.raises(ServingError if "positions" not in needle else ConfigError) as e:
        call(runner)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    if "positions" in needle:
        assert "at most 128" in str(e.value)
