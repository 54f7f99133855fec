"""Helpers for the agents tests: run the real ``polar-rl`` console script, read W&B offline runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "polar-rl"
#: the installed console script (or the same entry point through the interpreter)
POLAR_RL: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "polar_rl.agents.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: W&B disabled unless asked for, quiet, unbuffered."""
    env = dict(os.environ)
    env.update(WANDB_MODE="disabled", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_polar_rl(args: Sequence[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``polar-rl ARGS`` from the repository root and capture its output."""
    return subprocess.run(
        [*POLAR_RL, *map(str, args)], cwd=REPO, env=cli_env(**env), capture_output=True, text=True,
        timeout=timeout,
    )


#: a tiny training run on the example spec: checkpoints at 64 and 128 steps, metrics up to 192
TINY_RUN_ARGS = ["--config", "configs/smoke.yaml", "--task.name", str(REPO / "configs" / "tasks" / "example_spec.yaml"),
                 "--env.block_size", "1", "--training.total_timesteps", "192", "--training.checkpoint_freq", "64",
                 "--training.eval_freq", "64", "--training.progress_bar", "false", "--baselines.search_limit", "4"]


def finished_tiny_run(model_dir: Path, root: Path, args: Sequence[str] = TINY_RUN_ARGS) -> Path:
    """Train a complete tiny run (``polar-rl train ARGS`` on ``model_dir``) under ``root``; its run folder."""
    proc = subprocess.run([*POLAR_RL, "train", *args, "--model.name", str(model_dir), "--output_dir", str(root / "runs")],
                          cwd=REPO, env=cli_env(POLAR_RL_CACHE=str(root / "cache")), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (root / "runs").iterdir()
    return run


def killed_copy(run: Path, dest: Path) -> Path:
    """A copy of the finished ``run`` under ``dest/runs`` as if killed after its last rollout: no
    model.zip and no evaluation (neither the set in evals/ nor the names that link to it)."""
    copy = dest / "runs" / run.name
    shutil.copytree(run, copy, symlinks=True)
    for name in ("eval.json", "model.zip", "eval_records.jsonl", "report.md", "pareto.png", "layers.png"):
        (copy / name).unlink(missing_ok=True)
    shutil.rmtree(copy / "evals", ignore_errors=True)
    return copy


def run_dirs(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.iterdir() if p.is_dir()) if output_dir.is_dir() else []


# ---- W&B offline run files ------------------------------------------------------------------------


def _wandb_chunks(data: bytes) -> Iterator[bytes]:
    """Records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log
    framing in 32 KiB blocks (crc32 4 bytes, length 2 bytes LE, type 1 byte: FULL/FIRST/MIDDLE/LAST)."""
    assert data[:4] == b":W&B", f"not a W&B datastore file (header {data[:7]!r})"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``wandb.log`` row of the offline run(s) under ``run_dir/wandb``, read from the .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run under {run_dir / 'wandb'}"
    rows = []
    for path in files:
        for raw in _wandb_chunks(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


# ---- a tiny local model the CLI can load (seconds per run instead of minutes) -------------------


def tiny_model_dir(path: Path, num_layers: int = 4) -> Path:
    """Save a tiny random Llama (hidden size 16) with a byte-level tokenizer into ``path``: a local
    model folder ``--model.name`` accepts, built without network or the real model."""
    import torch
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path
