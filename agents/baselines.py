"""``polar-rl baselines``: search static programs on the train split, cache the result, print it.

    polar-rl baselines --config configs/default.yaml            # search on train, cache, print
    polar-rl baselines --config configs/default.yaml --split val --limit 64

The search, its families and its cache (:class:`polar_rl.search.families.BaselineStore`) live in
:mod:`polar_rl.search.families`, the program runner in :mod:`polar_rl.search.runner`, the candidates'
per-example results in :mod:`polar_rl.search.results`. This module is the command: load the split,
reuse or run the search, print it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polar_rl.config import SEARCHED_FAMILIES, ConfigError
from polar_rl.config_sources import add_config_arguments, load_config, overrides_from_args
from polar_rl.models.adapter import LayerModel
from polar_rl.search.families import BaselineStore, StaticBaselines, search_static_programs

# ---- the disk caches -----------------------------------------------------------------------------


def load_or_search(lm: LayerModel, cfg: Any, split: str | None = None, limit: int | None = None,
                   show_progress: bool = True) -> StaticBaselines:
    """The cached search for ``cfg`` (model, task, env.block_size, baselines.*), running it if needed."""
    from polar_rl.agents.evaluate import load_split

    split = split or cfg.task.train_split
    limit = cfg.baselines.search_limit if limit is None else limit
    task = load_split(cfg, split, limit)
    store = BaselineStore(lm.model_hash, task.name, split, len(task), cfg.env.block_size,
                          cfg.baselines.min_compute, cfg.baselines.greedy_candidates, cfg.model.dtype,
                          objective=cfg.baselines.objective)
    store.expect(task.examples, lm.device.type)  # type: ignore[arg-type]
    found = store.load()
    if found is not None:
        return found
    print(f"searching static programs on {task.name}/{split} ({len(task)} questions; cached afterwards "
          f"in {store.path.parent})")
    found = search_static_programs(
        lm, task.examples, task=task.name, split=split, block_size=cfg.env.block_size,  # type: ignore[arg-type]
        min_compute=cfg.baselines.min_compute, greedy_candidates=cfg.baselines.greedy_candidates,
        objective=cfg.baselines.objective, progress=print if show_progress else None,
    )
    store.save(found)
    return found


# ---- printing ----------------------------------------------------------------------------------


def print_baselines(found: StaticBaselines) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"static programs searched on {found.task}/{found.split} (n={found.n_examples}); "
                        f"full model: {found.objective} {found.full_objective:.3f}, accuracy {found.full_accuracy:.3f}",
                  box=box.SIMPLE_HEAD)
    for col in ("k", "compute", "bi skips", "skip_rank skips", "greedy skips", f"greedy {found.objective}", "greedy acc"):
        table.add_column(col, justify="right")
    for k in range(1, found.max_k + 1):
        table.add_row(
            str(k), f"{1 - k / found.num_blocks:.3f}", *(",".join(map(str, found.skipped(f, k)))
                                                          for f in SEARCHED_FAMILIES), f"{found.greedy_objective[k - 1]:.3f}", f"{found.greedy_accuracy[k - 1]:.3f}",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    print(f"search: {found.search_layer_calls} question-layer calls with prefix sharing vs "
          f"{found.search_layer_calls_no_cache} without ({found.seconds:.0f} s)")


# ---- command line ------------------------------------------------------------------------------


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (model, task, env.block_size, baselines.*)")
    parser.add_argument("--split", default=None, help="split to search on (default: task.train_split)")
    parser.add_argument("--limit", type=int, default=None, help="questions to search on (default: baselines.search_limit)")
    add_config_arguments(parser)
    return parser


def run_cli(argv: Sequence[str], prog: str = "polar-rl baselines") -> int:
    from polar_rl.agents.evaluate import load_lm

    args, unknown = make_parser(prog).parse_known_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    cfg = load_config(args.config, overrides_from_args(args) + list(unknown))
    lm = load_lm(cfg)
    try:
        found = load_or_search(lm, cfg, args.split, args.limit)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print_baselines(found)
    return 0
