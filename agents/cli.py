"""The ``polar-rl`` console script: thin dispatch to the entry points.

    polar-rl train --config configs/smoke.yaml [--env.compute_penalty 0.05 ...] [--resume RUN_DIR]
    polar-rl evaluate RUN_DIR [--split test] [--limit N]
    polar-rl baselines --config configs/default.yaml [--split val] [--limit N]
    polar-rl export RUN_DIR [--checkpoint best|final] [--format onnx|torchscript|both] [--out DIR]
    polar-rl generate --export DIR --prompt "..."
    polar-rl sweep configs/sweeps/compute_penalty.yaml --local [--count N] [--parallel N] [--resume SWEEP_DIR]
    polar-rl pareto SWEEP_DIR
    polar-rl <command> --help

A configuration or setup error (bad key or value, missing file, unknown model or task, a resume
folder without a checkpoint) prints one line on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

# command -> (module with run_cli(argv, prog, ...), one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("polar_rl.agents.train", "train a policy (and evaluate it on the test split)"),
    "evaluate": ("polar_rl.agents.evaluate", "re-evaluate a run folder: policy vs full model and static baselines"),
    "baselines": ("polar_rl.agents.baselines", "search static programs on the train split (cached) and list them"),
    "export": ("polar_rl.agents.export", "export a trained policy (ONNX / TorchScript + manifest) for serving"),
    "generate": ("polar_rl.agents.generate", "generate with an exported policy choosing the layers"),
    "sweep": ("polar_rl.agents.sweep", "run a W&B sweep (configs/sweeps/*.yaml): online, or offline with --local"),
    "pareto": ("polar_rl.agents.pareto", "a sweep's accuracy-compute frontier: frontier.png, frontier.json, report.md"),
}
EXIT_USAGE = 2


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: polar-rl <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`polar-rl <command> --help` lists the options of a command."]
    return "\n".join(lines)


def invocation() -> list[str]:
    """This process's command line as typed (``python -m module`` for module runs)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        module = {"train.py": "polar_rl.agents.train", "evaluate.py": "polar_rl.agents.evaluate"}.get(
            Path(argv[0]).name)
        if module:
            return [Path(sys.executable).name, "-m", module, *argv[1:]]
    if argv:
        argv[0] = Path(argv[0]).name
    return argv


def main(argv: Sequence[str] | None = None, command_line: Sequence[str] | None = None) -> int:
    """Run ``polar-rl`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``command_line`` is what a run records in command.txt (default: this process's command line
    when ``argv`` is None, else ``polar-rl`` + ``argv``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"polar-rl: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return EXIT_USAGE

    from polar_rl.config import ConfigError

    prog = f"polar-rl {command}"
    module = importlib.import_module(COMMANDS[command][0])
    try:
        if command == "train":
            recorded = command_line or (invocation() if argv is None else ["polar-rl", *args])
            return module.run_cli(rest, prog=prog, command=recorded)
        return module.run_cli(rest, prog=prog)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted ({shlex.join(['polar-rl', *args])})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
