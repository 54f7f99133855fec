"""Policy backends: an exported policy network as ``(N, D) float32 observations -> (N, 3) logits``.

``onnx`` (the default) runs ``policy.onnx`` in onnxruntime; ``torchscript`` runs ``policy.pt`` with
``torch.jit.load`` (TorchScript's own format, not a Python pickle). Each file's sha256 is checked
against the manifest before it is loaded, so a truncated or replaced file is a clear error, and
the loaded network is checked against the manifest's shapes at once (its input / output metadata,
then a call on a zero batch), so a policy that does not fit fails before the model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polar_rl.fileio import sha256
from polar_rl.serving.manifest import (
    ACTION_NAMES,
    FILES,
    INPUT_NAME,
    OUTPUT_NAME,
    ServingError,
    check_file_name,
)

BACKENDS = ("onnx", "torchscript")


class PolicyBackend(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


def policy_file(export_dir: Path, manifest: dict[str, Any], backend: str) -> Path:
    """The backend's file, checked: listed in the manifest, a plain name inside ``export_dir`` (no
    path, no link leading out), present, same sha256."""
    if backend not in BACKENDS:
        raise ServingError(f"unknown policy backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    entry = manifest["policy"]["files"].get(backend)
    if entry is None:
        raise ServingError(f"{export_dir} has no {backend} policy (exported: {sorted(manifest['policy']['files'])}); "
                           f"export with --format {backend} or both")
    path = export_dir / check_file_name(entry.get("file"), f"policy.files.{backend}.file")
    if path.resolve().parent != export_dir.resolve():
        raise ServingError(f"{path} leads outside the export folder (to {path.resolve()}); refusing to load it")
    if not path.is_file():
        raise ServingError(f"{export_dir} is incomplete: {entry['file']} is missing")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ServingError(f"{path} is corrupt or replaced: sha256 {digest[:16]}... differs from the manifest's "
                           f"{entry['sha256'][:16]}...")
    return path


class OnnxPolicy:
    """``policy.onnx`` in an onnxruntime CPU session."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for invalid models
            raise ServingError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None

    def check_signature(self, path: Path, dim: int) -> None:
        """ServingError unless the graph maps ``obs`` (batch, dim) float to ``logits`` (batch, 3), batch dynamic."""
        want = {("input", INPUT_NAME): dim, ("output", OUTPUT_NAME): len(ACTION_NAMES)}
        got = {("input", a.name): a for a in self.session.get_inputs()}
        got.update({("output", a.name): a for a in self.session.get_outputs()})
        if set(got) != set(want):
            raise ServingError(f"{path} has {sorted(got)}, but the runtime calls it with input {INPUT_NAME!r} and "
                               f"output {OUTPUT_NAME!r} only")
        for (kind, name), size in want.items():
            arg, shape = got[kind, name], list(got[kind, name].shape)
            if arg.type != "tensor(float)" or len(shape) != 2 or isinstance(shape[0], int) or shape[1] != size:
                raise ServingError(f"{path}: {kind} {name!r} is {arg.type} of shape {shape}, but the manifest "
                                   f"says float (batch, {size}) with a dynamic batch")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(obs, dtype=np.float32)})[0]


class TorchScriptPolicy:
    """``policy.pt`` through ``torch.jit.load`` on the CPU."""

    def __init__(self, path: Path) -> None:
        import torch

        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            raise ServingError(f"{path} is not a valid TorchScript file: {str(e).splitlines()[0]}") from None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.as_tensor(obs, dtype=torch.float32)).numpy()


def check_outputs(policy: PolicyBackend, path: Path, dim: int) -> None:
    """ServingError unless ``policy`` maps a zero batch of (2, dim) observations to (2, 3) float logits."""
    try:
        out = policy(np.zeros((2, dim), dtype=np.float32))
    except Exception as e:  # onnxruntime and TorchScript raise their own types
        line = next((x for x in reversed(str(e).splitlines()) if x.strip()), type(e).__name__)  # TorchScript: the cause
        raise ServingError(f"{path} cannot take the manifest's observations (batch, {dim}): {line}") from None
    want = (2, len(ACTION_NAMES))
    if not isinstance(out, np.ndarray) or out.shape != want or out.dtype.kind != "f":
        got = f"{out.dtype} of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ServingError(f"{path} maps (2, {dim}) observations to {got}, not float logits of shape {want}")


def load_policy(export_dir: Path, manifest: dict[str, Any], backend: str = "onnx") -> PolicyBackend:
    """The backend's policy, checked against the manifest's observation size before it is returned."""
    path = policy_file(export_dir, manifest, backend)
    dim = manifest["observation"]["dim"]
    policy: OnnxPolicy | TorchScriptPolicy
    if backend == "onnx":
        policy = OnnxPolicy(path)
        policy.check_signature(path, dim)
    else:
        policy = TorchScriptPolicy(path)
    check_outputs(policy, path, dim)
    return policy


__all__ = ["BACKENDS", "FILES", "OnnxPolicy", "PolicyBackend", "TorchScriptPolicy", "check_outputs", "load_policy",
           "policy_file"]
