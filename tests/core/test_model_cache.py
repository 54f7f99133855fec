"""The converted-model cache verifies every file it holds; model hashes follow the weights (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polar_rl.models import loading
from polar_rl.models.loading import MANIFEST, ModelSpecError, ensure_embedded, model_hash, verify_cached_copy
from tests.agents.helpers import REPO, tiny_model_dir


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", num_layers=2)


@pytest.fixture
def fake_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_source: Path) -> list[Path]:
    """``smollm2-135m`` converted from a fake GGUF by copying the tiny model; returns the conversions made."""
    import shutil

    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(loading, "embedded_gguf_path", lambda spec: gguf)
    made: list[Path] = []

    def convert(gguf_path: Path, target: Path) -> None:
        made.append(target)
        loading.save_copy(gguf_path, target, lambda folder: shutil.copytree(tiny_source, folder, dirs_exist_ok=True))

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    return made


def test_every_file_of_the_copy_is_listed_and_reused(fake_embedded: list[Path]) -> None:
    target = ensure_embedded("smollm2-135m")
    meta = json.loads((target / MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(meta["files"])
    assert ensure_embedded("smollm2-135m") == target and len(fake_embedded) == 1  # intact: reused


@pytest.mark.parametrize("bad_file", ["config.json", "tokenizer.json", MANIFEST])
def test_an_edited_or_corrupt_file_is_named_and_rebuilt(fake_embedded, capsys, bad_file: str) -> None:
    """The defect: editing num_hidden_layers in config.json loaded another model under the same hash."""
    target = ensure_embedded("smollm2-135m")
    good = (target / "config.json").read_text()
    if bad_file == "config.json":
        config = json.loads(good)
        config["num_hidden_layers"] = 1
        (target / bad_file).write_text(json.dumps(config))
    else:
        (target / bad_file).write_text("{ garbage")
    assert bad_file in (verify_cached_copy(target) or "")
    assert ensure_embedded("smollm2-135m") == target and len(fake_embedded) == 2
    out = capsys.readouterr().out
    assert "not intact" in out and bad_file in out
    assert verify_cached_copy(target) is None and (target / "config.json").read_text() == good
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_an_older_manifest_without_file_hashes_is_rebuilt(fake_embedded) -> None:
    target = ensure_embedded("smollm2-135m")
    meta = json.loads((target / MANIFEST).read_text())
    del meta["files"]
    (target / MANIFEST).write_text(json.dumps(meta))
    assert "older format" in (verify_cached_copy(target) or "")
    ensure_embedded("smollm2-135m")
    assert len(fake_embedded) == 2 and verify_cached_copy(target) is None


def test_a_copy_that_cannot_be_rebuilt_is_one_error_naming_the_file(fake_embedded, monkeypatch) -> None:
    target = ensure_embedded("smollm2-135m")
    (target / "tokenizer.json").write_text("{}")

    def read_only(gguf_path: Path, target: Path) -> None:
        raise PermissionError(13, "Permission denied", str(target.parent))

    monkeypatch.setattr(loading, "_convert_gguf", read_only)
    with pytest.raises(ModelSpecError, match=r"tokenizer\.json does not match.*Permission denied"):
        ensure_embedded("smollm2-135m")


def test_local_folder_hash_follows_its_content(tmp_path: Path, tiny_source: Path) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_source, folder)
    before = model_hash(str(folder))
    stat = (folder / "config.json").stat()
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    os.utime(folder / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: content decides
    assert model_hash(str(folder)) != before


def test_folder_with_a_manifest_that_does_not_verify_is_an_error(fake_embedded) -> None:
    target = ensure_embedded("smollm2-135m")
    (target / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelSpecError, match=r"tokenizer\.json"):
        model_hash(str(target))


def test_hub_id_hash_follows_the_resolved_commit(tmp_path: Path, tiny_source: Path) -> None:
    """A hub id is identified by the commit it resolved to, not by the id string: a new upstream
    revision gets a new hash. An offline hub cache stands in for the hub."""
    import shutil

    repo = tmp_path / "hub" / "models--org--tiny"
    code = ("from polar_rl import load_model; print('HASH', load_model('org/tiny').model_hash)")
    hashes = []
    for commit in ("a" * 40, "b" * 40):
        shutil.copytree(tiny_source, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
                   POLAR_RL_CACHE=str(tmp_path / "cache"))
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hashes.append(proc.stdout.split("HASH ")[1].strip())
    assert hashes[0] != hashes[1]
    assert hashes[0] == model_hash("org/tiny", "a" * 40)
    with pytest.raises(ModelSpecError, match="no resolved commit"):
        model_hash("org/tiny")
    assert REPO.is_dir()


def test_weights_hash_follows_the_weights() -> None:
    """The fallback identity of a hub model without a resolved commit: its loaded parameters."""
    import torch

    from polar_rl.models.loading import weights_hash
    from tests.conftest import tiny_hf_model

    model = tiny_hf_model("llama", 2)
    before = weights_hash(model)
    assert weights_hash(tiny_hf_model("llama", 2)) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(model) != before


def test_a_cache_that_cannot_be_written_converts_for_this_run_only(fake_embedded, monkeypatch, capsys,
                                                                   tmp_path: Path) -> None:
    """The converted-model cache is optional too: a read-only cache folder costs a warning and a
    conversion into a temp folder, never the run."""
    convert = loading._convert_gguf

    def cache_read_only(gguf_path: Path, target: Path) -> None:
        if str(target).startswith(str(tmp_path / "cache")):
            raise PermissionError(13, "Permission denied", str(target.parent))
        convert(gguf_path, target)

    monkeypatch.setattr(loading, "_convert_gguf", cache_read_only)
    target = ensure_embedded("smollm2-135m")
    assert not str(target).startswith(str(tmp_path / "cache")) and verify_cached_copy(target) is None
    assert "for this run only" in capsys.readouterr().out
    assert model_hash(str(target)) == json.loads((target / MANIFEST).read_text())["weights_sha256"][:16]
