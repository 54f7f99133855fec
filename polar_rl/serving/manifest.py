"""The export folder's ``manifest.json``: what a policy needs to run outside training.

An export folder holds ``manifest.json`` and the policy network (observation -> action logits) as
``policy.onnx`` and/or ``policy.pt`` (TorchScript). The manifest is plain JSON, never a pickle::

    format_version    MANIFEST_VERSION; a newer one is refused
    model             spec (name), hash (the weights hash polar-rl caches by), num_layers, hidden_size,
                      model_type, dtype of the run
    program           block_size, loop_runs, num_blocks
    observation       featuriser id, ObservationSpec fields, layout [[name, start, size], ...], dim
    actions           ["SKIP", "EXECUTE", "LOOP"] (the order of the logits)
    masks             polar_rl.masks.MaskRules (always_execute, max_loops, max_compute_fraction)
    policy            input / output names, files {format: {file, sha256, ...}}, opset
    source            run folder, checkpoint, algorithm, timesteps, compute_penalty (lambda), task, git
    versions          package versions at export time
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from polar_rl.config import ConfigError
from polar_rl.masks import MaskRules
from polar_rl.observation import ObservationSpec
from polar_rl.program import Action

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
#: the featuriser this runtime implements (polar_rl.observation.featurize); bump when it changes
FEATURISER = "polar_rl.observation/v1"
FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
INPUT_NAME, OUTPUT_NAME = "obs", "logits"
ACTION_NAMES = [a.name for a in Action]


class ServingError(ConfigError):
    """An export folder the runtime cannot use (missing file, newer format, mismatched model, ...)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def layout_rows(spec: ObservationSpec) -> list[list[Any]]:
    """The observation layout as ``[[name, start, size], ...]``, exactly as the featuriser builds it."""
    return [[name, s.start, s.stop - s.start] for name, s in spec.layout.items()]


def observation_entry(spec: ObservationSpec) -> dict[str, Any]:
    return {
        "featuriser": FEATURISER, "spec": spec.to_dict(), "layout": layout_rows(spec), "dim": spec.dim,
        "normalisation": "hidden and pooled are final-normed (the model's own final norm); no running "
                         f"statistics; every value clipped to [-{spec.clip:g}, {spec.clip:g}]",
    }


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """Load and check ``manifest.json``: format version, featuriser, observation layout, masks."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ServingError(f"export folder {export_dir} does not exist (make one with `polar-rl export RUN_DIR`)")
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise ServingError(f"{export_dir} is not a complete export: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServingError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ServingError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ServingError(f"{path}: format_version is missing or not an int ({version!r})")
    if version > MANIFEST_VERSION:
        raise ServingError(f"{path}: format_version {version} is newer than this runtime reads "
                           f"({MANIFEST_VERSION}); upgrade polar-rl")
    try:
        observation_spec(manifest)
        mask_rules(manifest)
        _ = manifest["model"]["num_layers"], manifest["model"]["hidden_size"], manifest["policy"]["files"]
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ServingError):
            raise
        raise ServingError(f"{path} is incomplete or malformed: {type(e).__name__} {e}") from None
    if manifest.get("actions") != ACTION_NAMES:
        raise ServingError(f"{path}: actions {manifest.get('actions')!r} differ from this runtime's {ACTION_NAMES}")
    return manifest


def observation_spec(manifest: dict[str, Any]) -> ObservationSpec:
    """The ObservationSpec of a manifest; ServingError when this runtime does not build that layout."""
    obs = manifest["observation"]
    if obs.get("featuriser") != FEATURISER:
        raise ServingError(f"observation featuriser {obs.get('featuriser')!r} is unknown to this runtime "
                           f"(it implements {FEATURISER!r})")
    fields = set(ObservationSpec.__dataclass_fields__)
    unknown = set(obs["spec"]) - fields
    if unknown:
        raise ServingError(f"observation spec has fields this runtime does not know: {sorted(unknown)}")
    spec = ObservationSpec.from_dict(obs["spec"])
    if obs.get("layout") != layout_rows(spec) or obs.get("dim") != spec.dim:
        raise ServingError(f"observation layout {obs.get('layout')} (dim {obs.get('dim')}) is not what this "
                           f"runtime builds for {spec}: {layout_rows(spec)} (dim {spec.dim})")
    return spec


def mask_rules(manifest: dict[str, Any]) -> MaskRules:
    return MaskRules.from_dict(manifest["masks"])
