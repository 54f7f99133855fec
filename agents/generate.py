"""Generate with an exported policy choosing the layers (:class:`polar_rl.serving.PolarRunner`).

    polar-rl generate --export runs/<run>/export --prompt "Question: What do plants need? Answer:"
    polar-rl generate --export DIR --prompt "..." --max-new-tokens 64 --backend torchscript

Prints the generated text, the program (one character a block: ``x`` execute, ``-`` skip, the run
count for a loop) and its compute fraction. An empty prompt, or a prompt + ``--max-new-tokens``
longer than the model's positions, fails at once (exit 2, both numbers named), before any layer
runs. Uses no stable_baselines3, gymnasium or wandb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polar_rl.config import ConfigError


def main(export_dir: str | Path, prompt: str, max_new_tokens: int = 32, backend: str = "onnx",
         model: str | None = None, device: str = "cpu", allow_model_mismatch: bool = False) -> tuple[str, str, float]:
    """Returns (text, program string, compute fraction) and prints them."""
    from polar_rl.serving import PolarRunner, read_manifest

    lm = None
    if model is not None:
        from polar_rl.models.loading import load_model

        manifest = read_manifest(export_dir)
        try:
            lm = load_model(model, device=device, dtype=manifest["model"].get("dtype") or "float32")
        except ValueError as e:
            raise ConfigError(f"--model {model!r}: {e}") from None
    runner = PolarRunner.load(export_dir, lm, backend=backend, device=device,
                              allow_model_mismatch=allow_model_mismatch)
    text, program = runner.generate_text(prompt, max_new_tokens)
    print(text)
    print(f"program {program}  compute {program.compute_fraction:.3f} ({program.num_calls}/{program.num_layers} layer calls)")
    return text, str(program), program.compute_fraction


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--export", required=True, type=Path, dest="export_dir",
                        help="an export folder (`polar-rl export RUN_DIR`)")
    parser.add_argument("--prompt", required=True, help="the prompt (encoded without special tokens)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torchscript"), help="policy backend")
    parser.add_argument("--model", default=None, help="model spec to use instead of the manifest's")
    parser.add_argument("--device", default="cpu", help="device for the model (default cpu)")
    parser.add_argument("--allow-model-mismatch", action="store_true",
                        help="accept a model whose weights hash differs from the manifest's")
    return parser


def run_cli(argv: list[str], prog: str = "polar-rl generate") -> int:
    args = make_parser(prog).parse_args(argv)
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    main(args.export_dir, args.prompt, args.max_new_tokens, args.backend, args.model, args.device,
         args.allow_model_mismatch)
    return 0


if __name__ == "__main__":
    import sys

    from polar_rl.agents.cli import main as cli_main

    sys.exit(cli_main(["generate", *sys.argv[1:]]))
