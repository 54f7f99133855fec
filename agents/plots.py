"""Plots of an evaluation: ``pareto.png`` (accuracy vs compute) and ``layers.png`` (the policy's
actions per block). matplotlib with the Agg backend; files are written atomically."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from polar_rl.fileio import atomic_open
from polar_rl.search.frontier import family

#: Colour and marker of each searched family's curve.
FAMILY_STYLE = {"bi": ("tab:purple", "s"), "skip_rank": ("tab:green", "^"), "greedy": ("tab:blue", "o")}


def _save(fig: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    """Accuracy (95 % CI bars) vs compute fraction: full, each static family over k, random, policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    fig, ax = plt.subplots(figsize=(7.5, 5))

    def point(m: dict[str, Any], **kw: Any) -> None:
        lo, hi = m["accuracy_ci"]
        acc = m["accuracy"]
        ax.errorbar([m["compute_fraction"]], [acc], yerr=[[acc - lo], [hi - acc]], capsize=3, **kw)

    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, m in methods.items():
        if family(name) in FAMILY_STYLE:
            families[str(family(name))].append(m)
    for fam, ms in families.items():
        color, marker = FAMILY_STYLE[fam]
        ms = sorted(ms, key=lambda m: m["compute_fraction"])
        xs, ys = [m["compute_fraction"] for m in ms], [m["accuracy"] for m in ms]
        lo = [m["accuracy"] - m["accuracy_ci"][0] for m in ms]
        hi = [m["accuracy_ci"][1] - m["accuracy"] for m in ms]
        ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, capsize=3, linestyle="-", alpha=0.85,
                    label=f"static: {fam}_k (searched on {(result.get('baseline_search') or {}).get('split', '?')})")
    randoms = [m for n, m in methods.items() if family(n) == "random"]
    if randoms:
        ax.scatter([m["compute_fraction"] for m in randoms], [m["accuracy"] for m in randoms], color="grey",
                   marker="x", label="static: random_k (one per seed)")
    if "full" in methods:
        point(methods["full"], color="black", marker="D", markersize=8, label="full model")
    if "policy_static" in methods:
        point(methods["policy_static"], color="tab:orange", marker="P", markersize=9,
              label="policy_static (the policy's majority program)")
    if "policy" in methods:
        point(methods["policy"], color="tab:red", marker="*", markersize=15, label="policy (per question)")
    ax.set_xlabel("compute fraction (layer calls / layers)")
    ax.set_ylabel(f"accuracy on {result['task']} / {result['split']} (n={result['n']}), 95 % CI")
    ax.set_title(f"{result['model']}: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    plt.close(fig)


def plot_layers(result: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
    """Per block, the share of SKIP / EXECUTE / LOOP in the policy's programs, for questions the full
    model gets right (left) and wrong (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = [r for r in records if r["method"] == "policy"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, full_right in zip(axes, (True, False), strict=True):
        rows = [r["runs"] for r in policy if bool(r["full_correct"]) == full_right]
        ax.set_title(f"full model {'right' if full_right else 'wrong'} (n={len(rows)})")
        ax.set_xlabel("block")
        if not rows:
            continue
        runs = np.asarray(rows)  # (n, B)
        blocks = np.arange(runs.shape[1])
        skip = (runs == 0).mean(0)
        execute = (runs == 1).mean(0)
        loop = (runs >= 2).mean(0)
        ax.bar(blocks, skip, color="tab:red", label="SKIP")
        ax.bar(blocks, execute, bottom=skip, color="tab:gray", label="EXECUTE")
        ax.bar(blocks, loop, bottom=skip + execute, color="tab:blue", label="LOOP")
        ax.set_xticks(blocks[:: max(1, len(blocks) // 15)])
    axes[0].set_ylabel("share of questions")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle(f"policy actions per block on {result['task']} / {result['split']}")
    _save(fig, path)
    plt.close(fig)
