"""Policy backends: an exported policy network as ``(N, D) float32 observations -> (N, 3) logits``.

``onnx`` (the default) runs ``policy.onnx`` in onnxruntime; ``torchscript`` runs ``policy.pt`` with
``torch.jit.load`` (TorchScript's own format, not a Python pickle). Each file's sha256 is checked
against the manifest before it is loaded, so a truncated or replaced file is a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polar_rl.serving.manifest import FILES, INPUT_NAME, OUTPUT_NAME, ServingError, sha256_file

BACKENDS = ("onnx", "torchscript")


class PolicyBackend(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


def policy_file(export_dir: Path, manifest: dict[str, Any], backend: str) -> Path:
    """The backend's file, checked: listed in the manifest, present, same sha256."""
    if backend not in BACKENDS:
        raise ServingError(f"unknown policy backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    entry = manifest["policy"]["files"].get(backend)
    if entry is None:
        raise ServingError(f"{export_dir} has no {backend} policy (exported: {sorted(manifest['policy']['files'])}); "
                           f"export with --format {backend} or both")
    path = export_dir / entry["file"]
    if not path.is_file():
        raise ServingError(f"{export_dir} is incomplete: {entry['file']} is missing")
    digest = sha256_file(path)
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


def load_policy(export_dir: Path, manifest: dict[str, Any], backend: str = "onnx") -> PolicyBackend:
    path = policy_file(export_dir, manifest, backend)
    return OnnxPolicy(path) if backend == "onnx" else TorchScriptPolicy(path)


__all__ = ["BACKENDS", "FILES", "OnnxPolicy", "PolicyBackend", "TorchScriptPolicy", "load_policy", "policy_file"]
