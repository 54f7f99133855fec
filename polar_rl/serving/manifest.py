"""The export folder's ``manifest.json``: what a policy needs to run outside training.

An export folder holds ``manifest.json`` and the policy network (observation -> action logits) as
``policy.onnx`` and/or ``policy.pt`` (TorchScript). The manifest is plain JSON, never a pickle::

    format_version    MANIFEST_VERSION; a newer one is refused
    model             name, spec (what load_model takes: a name, hub id or absolute folder), hash
                      (the weights hash polar-rl caches by), num_layers, hidden_size, model_type, dtype
    program           block_size, loop_runs, num_blocks
    observation       featuriser id, ObservationSpec fields, layout [[name, start, size], ...], dim
    actions           ["SKIP", "EXECUTE", "LOOP"] (the order of the logits)
    masks             polar_rl.masks.MaskRules (always_execute, max_loops, max_compute_fraction)
    policy            input / output names, files {format: {file, sha256, ...}}, opset
    source            run folder, checkpoint, algorithm, timesteps, compute_penalty (lambda), task, git
    versions          package versions at export time

:func:`read_manifest` checks meaning as well as layout: the settings pass the training config's own
checks (:class:`polar_rl.config.EnvConfig`), the masks and the observation are exactly what training
builds for this model and these settings, and every file name is a plain name inside the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from polar_rl.config import ConfigError, EnvConfig
from polar_rl.masks import MaskRules
from polar_rl.observation import ObservationSpec
from polar_rl.program import Action, check_block_size

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
#: the featuriser this runtime implements (polar_rl.observation.featurize); bump when it changes
FEATURISER = "polar_rl.observation/v1"
FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
INPUT_NAME, OUTPUT_NAME = "obs", "logits"
ACTION_NAMES = [a.name for a in Action]


class ServingError(ConfigError):
    """An export folder the runtime cannot use (missing file, newer format, mismatched model, ...)."""


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
    """Load ``manifest.json`` and check it (:func:`check_manifest`): layout and meaning."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ServingError(f"export folder {export_dir} does not exist (make one with `polar-rl export RUN_DIR`)")
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise ServingError(f"{export_dir} is not a complete export: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text())
    except OSError as e:
        raise ServingError(f"{path} cannot be read: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServingError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ServingError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ServingError(f"{path}: format_version is missing or not an int ({_short(version)})")
    if version > MANIFEST_VERSION:
        raise ServingError(f"{path}: format_version {version} is newer than this runtime reads "
                           f"({MANIFEST_VERSION}); upgrade polar-rl")
    try:
        check_manifest(manifest)
    except ServingError as e:
        raise ServingError(f"{path}: {e}") from None
    return manifest


def check_manifest(manifest: dict[str, Any]) -> None:
    """ServingError naming the first value a policy cannot run with: the settings must pass the
    training config's own checks (:class:`EnvConfig`) and the model's layer layout, the masks and the
    observation must be exactly what training builds from them, the policy's file names plain names."""
    try:
        model = manifest["model"]
        num_layers, hidden = _positive_int(model, "model", "num_layers"), _positive_int(model, "model", "hidden_size")
        env = env_settings(manifest)
        num_blocks = _check_program(manifest["program"], num_layers, env)
        _check_masks(manifest["masks"], num_layers, env)
        _check_observation(manifest["observation"], ObservationSpec(hidden, num_blocks, env.obs_pooled,
                                                                    env.obs_logit_lens))
        _check_policy_entry(manifest["policy"], manifest["observation"]["dim"])
    except ServingError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ServingError(f"incomplete or malformed: {type(e).__name__} {_short(str(e))}") from None
    if manifest.get("actions") != ACTION_NAMES:
        raise ServingError(f"actions {_short(manifest.get('actions'))} differ from this runtime's {ACTION_NAMES}")


#: EnvConfig field -> where the manifest holds it
SETTINGS = {"block_size": ("program", "block_size"), "loop_runs": ("program", "loop_runs"),
            "always_execute": ("masks", "always_execute"), "max_loops": ("masks", "max_loops"),
            "max_compute_fraction": ("masks", "max_compute_fraction"), "obs_pooled": ("observation", "spec", "pooled"),
            "obs_logit_lens": ("observation", "spec", "logit_lens"), "compute_penalty": ("compute_penalty",)}


def env_settings(manifest: dict[str, Any]) -> EnvConfig:
    """The manifest's environment settings, checked by the training config (same types, bounds, checks)."""
    values = {}
    for name, where in SETTINGS.items():
        node: Any = manifest
        for key in where[:-1]:
            node = node[key]
        if where[-1] in node:
            values[name] = node[where[-1]]
    try:
        return EnvConfig(**values)
    except ConfigError as e:
        field = re.match(r"env\.(\w+)", e.key or "")
        where = ".".join(SETTINGS.get(field.group(1) if field else "", ("settings",)))
        raise ServingError(f"{where}: {e} (the training config refuses it)") from None


def _check_program(program: dict[str, Any], num_layers: int, env: EnvConfig) -> int:
    try:
        num_blocks = check_block_size(num_layers, env.block_size)
    except ValueError as e:
        raise ServingError(f"program: {e}") from None
    if program.get("num_blocks") != num_blocks:
        raise ServingError(f"program.num_blocks={_short(program.get('num_blocks'))} but {num_layers} layers in "
                           f"blocks of {env.block_size} make {num_blocks}")
    return num_blocks


def _check_masks(masks: dict[str, Any], num_layers: int, env: EnvConfig) -> None:
    """The masks must be what the environment builds from these settings, with its range and budget checks."""
    rules = MaskRules(num_layers, env.block_size, env.loop_runs, frozenset(env.always_execute), env.max_loops,
                      env.max_compute_fraction)
    if (problem := rules.problem()) is not None:
        raise ServingError(f"masks.{problem}")
    want = rules.to_dict()
    if masks != want:
        diff = {k: masks.get(k) for k in sorted({*masks, *want}) if masks.get(k) != want.get(k)}
        raise ServingError(f"masks {_short(diff)} disagree with the model and program (expected {want})")


def _check_observation(obs: dict[str, Any], built: ObservationSpec) -> None:
    """The observation must be exactly what :mod:`polar_rl.observation` builds for these settings."""
    if obs.get("featuriser") != FEATURISER:
        raise ServingError(f"observation featuriser {_short(obs.get('featuriser'))} is unknown to this runtime "
                           f"(it implements {FEATURISER!r})")
    unknown = set(obs["spec"]) - set(ObservationSpec.__dataclass_fields__)
    if unknown:
        raise ServingError(f"observation spec has fields this runtime does not know: {_short(sorted(unknown))}")
    want = built.to_dict()
    diff = {k: obs["spec"].get(k) for k in want if obs["spec"].get(k) != want[k] or k not in obs["spec"]}
    if diff:
        edited = ", ".join(f"observation.spec.{k}={_short(v)}" for k, v in diff.items())
        raise ServingError(f"{edited}: the featuriser builds {want} for this model and these settings")
    if obs.get("layout") != layout_rows(built) or obs.get("dim") != built.dim:
        raise ServingError(f"observation layout {_short(obs.get('layout'))} (dim {_short(obs.get('dim'))}) is not "
                           f"what this runtime builds for {built}: {layout_rows(built)} (dim {built.dim})")


def _check_policy_entry(policy: dict[str, Any], dim: int) -> None:
    """Input / output names and shapes as the runtime calls the policy; every file a plain name."""
    want = {"input": INPUT_NAME, "output": OUTPUT_NAME, "input_shape": ["batch", dim],
            "output_shape": ["batch", len(ACTION_NAMES)]}
    for key, value in want.items():
        if policy.get(key) != value:
            raise ServingError(f"policy.{key}={_short(policy.get(key))}, but the runtime calls the policy with "
                               f"{key} {value!r}")
    files = policy["files"]
    if not isinstance(files, dict) or not files:
        raise ServingError(f"policy.files must map a format to its file, got {_short(files)}")
    for fmt, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ServingError(f"policy.files.{_short(fmt)} must hold a file name and its sha256, got {_short(entry)}")
        check_file_name(entry.get("file"), f"policy.files.{fmt}.file")


def check_file_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file name inside the export folder, else ServingError naming it."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or Path(name).is_absolute()):
        raise ServingError(f"{where} {_short(name)} is not a plain file name inside the export folder")
    return name


def _positive_int(section: dict[str, Any], name: str, key: str) -> int:
    value = section[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ServingError(f"{name}.{key} must be a positive int, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (a crafted value never floods the message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def observation_spec(manifest: dict[str, Any]) -> ObservationSpec:
    """The ObservationSpec of a checked manifest."""
    return ObservationSpec.from_dict(manifest["observation"]["spec"])


def mask_rules(manifest: dict[str, Any]) -> MaskRules:
    """The MaskRules of a checked manifest."""
    return MaskRules.from_dict(manifest["masks"])
