"""Export a trained policy for the serving runtime (:mod:`polar_rl.serving`).

    # ONNX (default) into RUN_DIR/export: policy.onnx + manifest.json
    polar-rl export runs/arc_easy__smollm2-135m__lam0.15__s0__20250101-120000
    # the final model, ONNX and TorchScript, somewhere else
    polar-rl export RUN_DIR --checkpoint final --format both --out exports/arc_easy

The exported network maps observations (N, D) float32 to action logits (N, 3) (SKIP, EXECUTE,
LOOP), batch size dynamic; deterministic serving takes the argmax of the logits under the masks in
the manifest, which is what SB3's ``predict(deterministic=True)`` does. The export is built in a
temporary folder, checked (``onnx.checker``, outputs against the SB3 policy) and only then moved into
place, so a failed export (a disk that fills up included: one error line) never leaves a folder
that looks complete and an old export stays as it was. ``--force`` replaces only an export folder
(its manifest.json and policy files, nothing else), never a run folder or anything holding one; the
folder gets the user's umask. Nothing is pickled.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polar_rl.config import ConfigError, EnvConfig
from polar_rl.config_sources import load_config
from polar_rl.fileio import replace_folder, sha256, temp_folder, write_text_atomic
from polar_rl.masks import MaskRules
from polar_rl.models.adapter import LayerModel
from polar_rl.observation import ObservationSpec
from polar_rl.program import check_block_size
from polar_rl.serving.manifest import (
    ACTION_NAMES,
    FILES,
    INPUT_NAME,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    OUTPUT_NAME,
    check_manifest,
    observation_entry,
)

OPSET = 18
FORMATS = {"onnx": ("onnx",), "torchscript": ("torchscript",), "both": ("onnx", "torchscript")}
PACKAGES = ("polar-rl", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "stable-baselines3",
            "sb3-contrib", "numpy")
PARITY_TOL = 1e-4  # float32 kernels differ between torch and onnxruntime at ~1e-6 relative


class ActorLogits(nn.Module):
    """The deterministic actor of an SB3 actor-critic policy: features -> policy MLP -> action logits."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.features = getattr(policy, "pi_features_extractor", None) or policy.features_extractor
        self.mlp = policy.mlp_extractor.policy_net
        self.head = policy.action_net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, 3)
        return self.head(self.mlp(self.features(obs.float())))


def actor_logits(model: Any) -> ActorLogits:
    """A CPU float32 copy of ``model``'s actor (the SB3 model itself is left as it is)."""
    import copy

    policy = model.policy
    if getattr(policy, "normalize_images", False) and len(policy.observation_space.shape) != 1:
        raise ConfigError("only flat Box observation spaces can be exported")
    return copy.deepcopy(ActorLogits(policy)).float().cpu().eval()


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _export_onnx(net: ActorLogits, dim: int, path: Path) -> None:
    import onnx

    example = (torch.zeros(2, dim),)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes from the exporter
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, example, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"obs": {0: torch.export.Dim("batch")}})
    finally:
        quiet.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


def _export_torchscript(net: ActorLogits, dim: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (torch.zeros(2, dim),))
    traced.save(str(path))


def _check_parity(net: ActorLogits, folder: Path, formats: tuple[str, ...], dim: int, clip: float) -> None:
    """Exported logits must equal the policy's on random observations and batch sizes 1 and 33."""
    from polar_rl.serving.policy import OnnxPolicy, TorchScriptPolicy

    rng = np.random.default_rng(0)
    for n in (1, 33):
        obs = rng.uniform(-clip, clip, size=(n, dim)).astype(np.float32) / 10
        with torch.inference_mode():
            want = net(torch.from_numpy(obs)).numpy()
        for fmt in formats:
            path = folder / FILES[fmt]
            got = OnnxPolicy(path)(obs) if fmt == "onnx" else TorchScriptPolicy(path)(obs)
            if got.shape != want.shape or not np.allclose(got, want, rtol=PARITY_TOL, atol=PARITY_TOL):
                err = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
                raise ConfigError(f"{fmt} export does not reproduce the policy: shape {got.shape} vs {want.shape}, "
                                  f"max |logit difference| {err:.3g} (tolerance {PARITY_TOL} absolute + relative)")


#: the only files an export folder holds (what ``--force`` may delete)
EXPORT_FILES = frozenset({MANIFEST_FILE, *FILES.values()})


def check_out(out: Path, force: bool = False, run_dir: Path | None = None) -> None:
    """ConfigError naming ``out`` unless an export may be written there: a new path, an empty folder,
    or (with ``force``) an existing export; never ``run_dir`` or a folder above it."""
    if run_dir is not None:
        o, r = out.resolve(), run_dir.resolve()
        if o == r or o in r.parents:
            what = "is the run folder" if o == r else f"holds the run folder {run_dir}"
            raise ConfigError(f"--out {out} {what}; export into a folder of its own (default: RUN_DIR/export)")
    try:
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            return
        why = _not_an_export(out)
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be read: {e}") from None
    if why is not None:
        raise ConfigError(f"--out {out} {why}; an export replaces only an earlier export folder (manifest.json "
                          f"and policy files) or an empty folder, with or without --force")
    if not force:
        raise ConfigError(f"--out {out} holds an export already; pass --force to replace it")


def _not_an_export(folder: Path) -> str | None:
    """Why ``folder`` (existing, not empty) is not an export folder, or None when it is one."""
    if not folder.is_dir():
        return "is a file, not a folder"
    if (folder / "config.yaml").exists():
        return "is a run folder (it holds config.yaml)"
    names = sorted(p.name for p in folder.iterdir())
    subfolders = [n for n in names if (folder / n).is_dir()]
    if subfolders:
        runs = [n for n in subfolders if (folder / n / "config.yaml").exists()]
        return f"holds run folders ({', '.join(runs[:3])})" if runs else f"holds folders ({', '.join(subfolders[:3])})"
    others = [n for n in names if n not in EXPORT_FILES]
    if others:
        return f"holds files an export does not ({', '.join(others[:3])})"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"holds no {MANIFEST_FILE}"
    except (OSError, ValueError) as e:
        return f"has a {MANIFEST_FILE} that does not parse ({type(e).__name__})"
    if not (isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int)
            and all(isinstance(manifest.get(k), dict) for k in ("model", "policy", "observation"))):
        return f"has a {MANIFEST_FILE} that is not a polar-rl export manifest"
    return None


def export_policy(model: Any, lm: LayerModel, env: EnvConfig, out: str | Path, formats: tuple[str, ...] = ("onnx",),
                  source: dict[str, Any] | None = None, dtype: str = "float32", force: bool = False,
                  model_spec: str | None = None) -> Path:
    """Write ``out/manifest.json`` and the policy files; returns ``out``.

    ``model``: an SB3 actor-critic (PPO / MaskablePPO / A2C) trained on ``lm`` with ``env`` settings;
    ``model_spec``: what ``load_model`` takes to load ``lm`` again (default ``lm.name``; a local folder
    must be given as its absolute path, since ``lm.name`` is only its base name).
    ``out`` must be new, empty or (``force``) an earlier export (:func:`check_out`). An OSError while
    writing (disk full, no permission) is a ConfigError naming ``out``; nothing is left behind.
    """
    out = Path(out)
    check_out(out, force)
    num_blocks = check_block_size(lm.num_layers, env.block_size)
    spec = ObservationSpec(lm.hidden_size, num_blocks, env.obs_pooled, env.obs_logit_lens)
    shape = tuple(model.observation_space.shape)
    if shape != (spec.dim,):
        raise ConfigError(f"the policy takes observations of shape {shape} but {lm.name} with block_size "
                          f"{env.block_size} gives ({spec.dim},); is this the run's model?")
    rules = MaskRules(lm.num_layers, env.block_size, env.loop_runs, frozenset(env.always_execute), env.max_loops,
                      env.max_compute_fraction)
    net = actor_logits(model)
    manifest = {
        "format_version": MANIFEST_VERSION,
        "model": {"name": lm.name, "spec": model_spec or lm.name, "hash": lm.model_hash, "num_layers": lm.num_layers,
                  "hidden_size": lm.hidden_size, "model_type": lm.model_type, "dtype": dtype},
        "program": {"block_size": env.block_size, "loop_runs": env.loop_runs, "num_blocks": num_blocks},
        "observation": observation_entry(spec),
        "actions": ACTION_NAMES,
        "masks": rules.to_dict(),
        "policy": {"input": INPUT_NAME, "output": OUTPUT_NAME, "input_shape": ["batch", spec.dim],
                   "output_shape": ["batch", len(ACTION_NAMES)], "decoding": "argmax of the masked logits",
                   "files": {}},
        "compute_penalty": env.compute_penalty,
        "source": source or {},
        "versions": package_versions(),
    }
    try:
        _write_export(net, manifest, formats, spec, out)
    except OSError as e:
        raise ConfigError(f"cannot write the export {out}: {e}; {out} is left as it was") from None
    return out


def _write_export(net: ActorLogits, manifest: dict[str, Any], formats: tuple[str, ...], spec: ObservationSpec,
                  out: Path) -> None:
    """Build the export in a temporary folder beside ``out``, check it, then swap it in."""
    tmp = temp_folder(out)
    try:
        files = manifest["policy"]["files"]
        for fmt in formats:
            path = tmp / FILES[fmt]
            (_export_onnx if fmt == "onnx" else _export_torchscript)(net, spec.dim, path)
            files[fmt] = {"file": path.name, "sha256": sha256(path)}
            if fmt == "onnx":
                files[fmt]["opset"] = OPSET
        _check_parity(net, tmp, formats, spec.dim, spec.clip)
        check_manifest(manifest)  # what the serving runtime would refuse is never written
        write_text_atomic(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")  # last: the folder is complete
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- entry point -------------------------------------------------------------------------------


def main(run_dir: str | Path, checkpoint: str = "best", fmt: str = "onnx", out: str | Path | None = None,
         force: bool = False) -> Path:
    """Export the ``checkpoint`` policy of the run in ``run_dir``; returns the export folder."""
    from polar_rl.agents.algorithms import load_algorithm
    from polar_rl.agents.evaluate import load_lm, resolve_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    target = Path(out) if out is not None else run_dir / "export"
    check_out(target, force, run_dir)
    cfg = load_config(run_dir / "config.yaml")
    path = resolve_checkpoint(run_dir, checkpoint)
    lm = load_lm(cfg)
    model = load_algorithm(cfg, path, lm)
    git = (run_dir / "git.txt").read_text().split() if (run_dir / "git.txt").is_file() else []
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": path.name, "algo": cfg.agent.algo,
              "num_timesteps": int(getattr(model, "num_timesteps", 0)), "task": cfg.task.name, "seed": cfg.seed,
              "compute_penalty": cfg.env.compute_penalty, "git_commit": git[1] if len(git) > 1 else None,
              "env": cfg.env.to_dict()}
    local = Path(cfg.model.name).expanduser()
    spec = str(local.resolve()) if local.is_dir() else cfg.model.name  # a folder: where it is, not its base name
    export_policy(model, lm, cfg.env, target, FORMATS[fmt], source, dtype=str(cfg.model.dtype), force=force,
                  model_spec=spec)
    print(f"exported {path.name} ({', '.join(FORMATS[fmt])}) to {target}")
    return target


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("run_dir", type=Path, help="the run folder (holds config.yaml and model zips)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), final, auto (best if present, else final) or a path to a model zip")
    parser.add_argument("--format", default="onnx", choices=sorted(FORMATS), dest="fmt",
                        help="onnx (default), torchscript or both")
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: RUN_DIR/export)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier export folder (never a run folder or anything but an export)")
    return parser


def run_cli(argv: list[str], prog: str = "polar-rl export") -> int:
    args = make_parser(prog).parse_args(argv)
    main(args.run_dir, args.checkpoint, args.fmt, args.out, args.force)
    return 0


if __name__ == "__main__":
    import sys

    from polar_rl.agents.cli import main as cli_main

    sys.exit(cli_main(["export", *sys.argv[1:]]))
