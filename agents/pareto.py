"""The accuracy-compute frontier of a sweep: ``polar-rl pareto SWEEP_DIR``.

Reads each finished trial's ``eval.json`` (its test evaluation: the policy, the full model and the
static programs at the policy's compute) and writes, in the sweep folder:

- ``frontier.json``: one point per trial (its swept parameters, test accuracy with 95 % CI, compute
  and FLOPs fractions, the paired test against the full model, the best static program at its
  compute (:func:`polar_rl.agents.report.best_static`, the same one report.md's verdict names) with
  the paired test against it, and whether the point is non-dominated among the policies), the full
  model, and the static programs every trial evaluated (the union: each is the same program on the
  same questions, read from the program cache);
- ``frontier.png``: accuracy vs compute with CI bars, the static families as curves, the full model,
  the policies labelled by their swept values, non-dominated ones ringed, and the ceiling of any
  per-question router over the programs searched on train (``oracle``: right when some program of no
  more compute is right; :mod:`polar_rl.search.frontier`);
- ``report.md``: the same as a table.

A finished trial whose run folder or ``eval.json`` is missing or unreadable is named on stderr and
in both files (``missing``), never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polar_rl.agents.plots import FAMILY_STYLE
from polar_rl.agents.report import best_static, check_evaluation, eval_files
from polar_rl.agents.run_dir import EVAL_FILE
from polar_rl.agents.sweep import read_state, run_path
from polar_rl.config import ConfigError, shorten
from polar_rl.fileio import atomic_open, write_json_atomic
from polar_rl.search.frontier import Scored, family, non_dominated, router_ceiling


def static_rows(methods: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The static-program rows of an evaluation: each family's programs, random draws included (not the
    full model, the policy, its ablation or the random mean)."""
    return {n: m for n, m in methods.items() if family(n) is not None}


def read_result(sweep_dir: Path, trial: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A finished trial's ``eval.json``, or None and why it cannot be read (folder or file missing,
    not JSON, not an evaluation)."""
    run = run_path(sweep_dir, trial["run_dir"])
    if not run.is_dir():
        return None, f"its run folder {run} is missing"
    eval_file = run / EVAL_FILE
    if not eval_file.is_file():
        return None, f"{eval_file} is missing"
    problem = check_evaluation(eval_files(run))
    if problem is not None:
        return None, problem
    try:
        result = json.loads(eval_file.read_text(encoding="utf-8"))
        methods = result["methods"]
        if not {"full", "policy"} <= set(methods):
            raise KeyError("methods full and policy")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        return None, f"{eval_file} is unreadable ({shorten(str(e), 80)})"
    return result, None


def collect(sweep_dir: Path) -> dict[str, Any]:
    """The frontier's data from the sweep's finished trials; ``missing``: the finished ones left out."""
    state = read_state(sweep_dir)
    points: list[dict[str, Any]] = []
    statics: dict[str, dict[str, Any]] = {}
    full: dict[str, Any] | None = None
    header: dict[str, Any] = {}
    missing: list[dict[str, str]] = []
    used: list[dict[str, Any]] = []
    for trial in (t for t in state["trials"] if t["state"] == "finished"):
        result, problem = read_result(sweep_dir, trial)
        if result is None:
            missing.append({"trial": trial["name"], "run_dir": trial["run_dir"], "problem": str(problem)})
            continue
        used.append(trial)
        key = (result["task"], result["split"], result["n"], result["model_hash"])
        if header and key != header["key"]:
            raise ConfigError(f"{trial['name']} was evaluated on {key}, the others on {header['key']}: "
                              f"a frontier compares one model on one test set")
        header = {"key": key, "task": result["task"], "split": result["split"], "n": result["n"],
                  "model": result["model"]}
        methods = result["methods"]
        full = full or methods["full"]
        policy = methods["policy"]
        best = best_static(methods, policy["compute_fraction"])
        statics.update(static_rows(methods))
        points.append({
            "trial": trial["name"], "params": trial["params"], "run_dir": trial["run_dir"],
            "compute_penalty": result.get("compute_penalty"), "seed": result.get("seed"),
            "accuracy": policy["accuracy"], "accuracy_ci": policy["accuracy_ci"],
            "compute_fraction": policy["compute_fraction"], "flops_fraction": policy.get("flops_fraction"),
            "delta_vs_full": policy["delta_vs_full"], "p_vs_full": policy["mcnemar"]["p_value"],
            "best_static": None if best is None else {
                "name": best[0], "program": best[1].get("program"), "accuracy": best[1]["accuracy"],
                "compute_fraction": best[1]["compute_fraction"],
                "policy_minus_static": policy["accuracy"] - best[1]["accuracy"],
                "p": best[1]["vs_policy"]["mcnemar"]["p_value"]},
            "policy_static": methods.get("policy_static", {}).get("accuracy"),
        })
    flags = non_dominated([Scored(p["trial"], p["accuracy"], p["compute_fraction"]) for p in points])
    for p, flag in zip(points, flags, strict=True):
        p["non_dominated"] = flag
    return {"sweep": str(sweep_dir), "task": header.get("task"), "split": header.get("split"),
            "n": header.get("n"), "model": header.get("model"), "full": full,
            "points": sorted(points, key=lambda p: p["compute_fraction"]),
            "static": dict(sorted(statics.items(), key=lambda kv: (family(kv[0]), kv[1]["compute_fraction"]))),
            "oracle": oracle_curve(sweep_dir, used, statics),
            "trials": len(state["trials"]), "finished": len(points), "missing": missing}


def oracle_curve(sweep_dir: Path, trials: list[dict[str, Any]], statics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ceiling of any per-question router over the static programs the trials evaluated
    (:func:`polar_rl.search.frontier.router_ceiling`, from the trials' ``eval_records.jsonl``; a
    question's first record counts). A policy above it would need programs outside the set; far below
    it, the router (not the programs) is what is missing."""
    correct: dict[str, dict[str, bool]] = {}
    compute: dict[str, float] = {}
    for trial in trials:
        path = run_path(sweep_dir, trial["run_dir"]) / "eval_records.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["method"] in statics:
                correct.setdefault(r["method"], {}).setdefault(r["example_id"], bool(r["correct"]))
                compute[r["method"]] = float(r["compute_fraction"])
    programs = [Scored(n, statics[n]["accuracy"], compute[n], c) for n, c in correct.items()]
    return [{"compute_fraction": p.compute, "accuracy": p.accuracy, "programs": p.programs}
            for p in router_ceiling(programs)]


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in point["params"].items()) or point["trial"]


def plot_frontier(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, m in data["static"].items():
        families[family(name) or name].append(m)
    for fam, ms in sorted(families.items()):
        ms = sorted(ms, key=lambda m: m["compute_fraction"])
        color, marker = FAMILY_STYLE.get(fam, ("grey", "x"))
        ax.errorbar([m["compute_fraction"] for m in ms], [m["accuracy"] for m in ms],
                    yerr=[[m["accuracy"] - m["accuracy_ci"][0] for m in ms], [m["accuracy_ci"][1] - m["accuracy"] for m in ms]],
                    color=color, marker=marker, capsize=3, alpha=0.8, label=f"static: {fam}_k",
                    linestyle="-" if fam in FAMILY_STYLE else "none")
    if data["full"] is not None:
        f = data["full"]
        ax.errorbar([1.0], [f["accuracy"]], yerr=[[f["accuracy"] - f["accuracy_ci"][0]], [f["accuracy_ci"][1] - f["accuracy"]]],
                    color="black", marker="D", markersize=8, capsize=3, label="full model")
    if data.get("oracle"):
        o = data["oracle"]
        ax.plot([p["compute_fraction"] for p in o], [p["accuracy"] for p in o], color="grey", linestyle="--",
                label="oracle router over these static programs (ceiling)")
    pts = data["points"]
    if pts:
        ax.errorbar([p["compute_fraction"] for p in pts], [p["accuracy"] for p in pts],
                    yerr=[[p["accuracy"] - p["accuracy_ci"][0] for p in pts], [p["accuracy_ci"][1] - p["accuracy"] for p in pts]],
                    color="tab:red", marker="*", markersize=13, capsize=3, linestyle="none", label="policy (one per trial)")
        nd = [p for p in pts if p["non_dominated"]]
        ax.scatter([p["compute_fraction"] for p in nd], [p["accuracy"] for p in nd], s=300, facecolors="none",
                   edgecolors="tab:red", label="non-dominated policies")
        same: dict[tuple[float, float], list[str]] = defaultdict(list)  # trials that landed on one point
        for p in pts:
            same[(round(p["compute_fraction"], 4), round(p["accuracy"], 4))].append(_label(p))
        for (x, y), labels in same.items():
            ax.annotate("; ".join(labels), (x, y), textcoords="offset points", xytext=(4, -12), fontsize=7,
                        color="tab:red")
    ax.set_xlabel("compute fraction (layer calls / layers)")
    ax.set_ylabel(f"accuracy on {data['task']} / {data['split']} (n={data['n']}), 95 % CI")
    left_out = f", {len(data['missing'])} left out: see report.md" if data.get("missing") else ""
    ax.set_title(f"{data['model']}: sweep frontier ({data['finished']} of {data['trials']} trials finished{left_out})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def report_table(data: dict[str, Any]) -> str:
    full = data["full"] or {}
    lines = [f"# Sweep frontier: {data['task']} / {data['split']} (n = {data['n']}), model `{data['model']}`", "",
             f"{data['finished']} of {data['trials']} trials finished. Full model: "
             f"{full.get('accuracy', float('nan')):.3f}. `*` marks the non-dominated policies.", "",
             "| trial | parameters | accuracy [95 % CI] | compute | FLOPs | Δ vs full (p) | best static at that compute | policy − static (p) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in data["points"]:
        lo, hi = p["accuracy_ci"]
        s = p["best_static"]
        static = "-" if s is None else f"`{s['name']}` {s['accuracy']:.3f} @ {s['compute_fraction']:.3f}"
        vs = "-" if s is None else f"{s['policy_minus_static']:+.3f} ({s['p']:.3g})"
        flops = "-" if p["flops_fraction"] is None else f"{p['flops_fraction']:.3f}"
        lines.append(f"| {p['trial']}{' *' if p['non_dominated'] else ''} | {_label(p)} | {p['accuracy']:.3f} "
                     f"[{lo:.3f}, {hi:.3f}] | {p['compute_fraction']:.3f} | {flops} | {p['delta_vs_full']:+.3f} "
                     f"({p['p_vs_full']:.3g}) | {static} | {vs} |")
    if data.get("missing"):
        lines += ["", "Finished trials left out (not on the frontier): " + "; ".join(
            f"{m['trial']}: {m['problem']}" for m in data["missing"])]
    if data.get("oracle"):
        lines += ["", "Ceiling of a per-question router over these static programs (a question is right when any "
                  "program of compute <= c gets it right): " + ", ".join(
                      f"{p['accuracy']:.3f} @ {p['compute_fraction']:.3f}" for p in data["oracle"])]
    lines += ["", "Static programs evaluated by the trials (the same programs on the same questions):", "",
              "| program | accuracy [95 % CI] | compute |", "|---|---|---|"]
    for name, m in data["static"].items():
        lines.append(f"| `{name}` | {m['accuracy']:.3f} [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}] | "
                     f"{m['compute_fraction']:.3f} |")
    return "\n".join(lines) + "\n"


def write_frontier(sweep_dir: str | Path) -> dict[str, Any]:
    """Write ``frontier.json``, ``frontier.png`` and ``report.md`` into the sweep folder."""
    sweep_dir = Path(sweep_dir)
    data = collect(sweep_dir)
    missing = data["missing"]
    if not data["points"] and missing:
        named = "; ".join(f"{m['trial']}: {m['problem']}" for m in missing[:3])
        more = f"; and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(f"{sweep_dir}: none of its {len(missing)} finished trials can be read ({named}{more}); "
                          f"nothing to plot")
    if not data["points"]:
        raise ConfigError(f"{sweep_dir}: no finished trial with an {EVAL_FILE} yet; nothing to plot")
    for m in data["missing"]:
        print(f"[pareto] {m['trial']} (finished) left out: {m['problem']}", file=sys.stderr)
    plot_frontier(data, sweep_dir / "frontier.png")
    with atomic_open(sweep_dir / "report.md", "w") as fh:
        fh.write(report_table(data))
    write_json_atomic(sweep_dir / "frontier.json", data)
    left_out = f" ({len(data['missing'])} finished trials left out, named above)" if data["missing"] else ""
    print(f"[pareto] {len(data['points'])} points: {sweep_dir / 'frontier.png'}, frontier.json, report.md{left_out}")
    return data


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (holds sweep.json)")
    return parser


def run_cli(argv: Sequence[str], prog: str = "polar-rl pareto") -> int:
    args = make_parser(prog).parse_args(list(argv))
    write_frontier(args.sweep_dir)
    return 0
