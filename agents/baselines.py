"""Static baselines: one program for every input, chosen on the train split only.

    polar-rl baselines --config configs/default.yaml            # search on train, cache, print
    polar-rl baselines --config configs/default.yaml --split val --limit 64

Four families, each a program per k = number of skipped blocks (k = 1..K, K down to
``baselines.min_compute`` of the layer calls); the first block and the last are candidates like any other:

- ``bi``: ShortGPT Block Influence, 1 - cos(input, output) of each block over the real tokens of the
  search set; skip the k least influential blocks.
- ``skip_rank``: skip each block alone, rank by the loss of the search objective (``baselines.objective``:
  mean gold probability over the choices, or the gold margin / log-prob of the environment's task
  terms); skip the k cheapest.
- ``greedy``: iterative removal. Starting from the full program, remove the block whose removal costs
  least given those already removed. Candidates share the prefix up to the removed block: the states
  before every block of the current program are kept, so a candidate runs only the blocks after it.
  With ``greedy_candidates`` m > 0 only the m cheapest candidates of the previous step are re-scored
  (lazy greedy); 0 re-scores all.
- ``random``: k blocks drawn uniformly (one program per seed).

The search result is cached on disk by model hash (+ dtype), task, split, search size and settings
(``$POLAR_RL_CACHE/baselines/``); a file for another model hash is never reused.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polar_rl.agents.run_dir import slug, write_json_atomic
from polar_rl.config import BASELINE_FAMILIES as FAMILIES
from polar_rl.config import SEARCHED_FAMILIES
from polar_rl.envs.engine import choice_gold_logprob, task_term
from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.models.loading import cache_root
from polar_rl.tasks.examples import MCExample
from polar_rl.tasks.multiple_choice import (
    PackedBatch,
    check_fits,
    choice_scores,
    pack_questions,
    packed_inputs,
    packed_lengths,
)

SEARCH_VERSION = 1  # bump when the search changes what it returns


def max_skips(num_blocks: int, min_compute: float) -> int:
    """K: the most blocks a static baseline skips (compute stays >= ``min_compute``)."""
    return max(1, min(num_blocks - 1, int(math.floor(num_blocks * (1 - min_compute) + 1e-9))))


@dataclass
class StaticBaselines:
    """What the search found: block orders per family and the search-set objective per k."""

    model_hash: str
    task: str
    split: str
    n_examples: int
    num_layers: int
    block_size: int
    max_k: int
    full_objective: float  # mean search objective of the full model on the search set
    full_accuracy: float
    block_influence: list[float]  # per block, higher = more influential
    skip_alone: list[float]  # per block, objective loss when skipped alone
    greedy_order: list[int]  # blocks in removal order
    greedy_objective: list[float]  # objective after each removal
    greedy_accuracy: list[float]
    search_layer_calls: int = 0  # question x layer calls the greedy search spent (prefix sharing)
    search_layer_calls_no_cache: int = 0  # the same programs each run from the embedding
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    objective: str = "gold_prob"  # the task term the search keeps high (see envs.engine.task_term)

    @property
    def num_blocks(self) -> int:
        return self.num_layers // self.block_size

    def skipped(self, family: str, k: int, seed: int = 0) -> list[int]:
        """The blocks ``family`` skips at k (sorted)."""
        if family not in FAMILIES:
            raise ValueError(f"unknown baseline family {family!r}; choose one of {', '.join(FAMILIES)}")
        if not isinstance(k, int) or not 0 <= k < self.num_blocks:
            raise ValueError(f"k={k!r} skipped blocks is out of range 0..{self.num_blocks - 1} "
                             f"({self.num_blocks} blocks)")
        if family == "bi":
            chosen = list(np.argsort(self.block_influence, kind="stable")[:k])
        elif family == "skip_rank":
            chosen = list(np.argsort(self.skip_alone, kind="stable")[:k])
        elif family == "greedy":
            if k > len(self.greedy_order):
                raise ValueError(f"greedy_k: k={k} is beyond the search's K={len(self.greedy_order)} "
                                 f"(raise baselines.min_compute's range and search again)")
            chosen = self.greedy_order[:k]
        else:
            rng = np.random.default_rng([seed, k])
            chosen = list(rng.choice(self.num_blocks, size=k, replace=False))
        return sorted(int(b) for b in chosen)

    def runs(self, family: str, k: int, seed: int = 0) -> list[int]:
        """Run counts per block (0 skip, 1 execute) of ``family`` at k."""
        skip = set(self.skipped(family, k, seed))
        return [0 if b in skip else 1 for b in range(self.num_blocks)]

    def to_dict(self) -> dict[str, Any]:
        return {"version": SEARCH_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StaticBaselines:
        data = dict(data)
        if data.pop("version", None) != SEARCH_VERSION:
            raise ValueError("baseline cache from another search version")
        return cls(**data)


# ---- the search ---------------------------------------------------------------------------------


@dataclass
class _Chunk:
    batch: PackedBatch
    embedded: torch.Tensor  # (B, T, H)
    inputs: LayerInputs
    real: torch.Tensor  # (B, T) bool: real (non-pad) tokens


class ProgramScorer:
    """Runs block sequences over a fixed set of questions (packed, length-sorted chunks) and scores them
    by ``objective`` (a task term of the environment: gold_prob, margin or gold_logprob).

    ``layer_calls`` counts question x layer calls actually run.
    """

    def __init__(self, lm: LayerModel, examples: Sequence[MCExample], block_size: int = 1, chunk_size: int = 16,
                 objective: str = "gold_prob"):
        task_term(objective, torch.zeros(0), torch.zeros(0), torch.zeros(0))  # unknown names fail here
        self.lm, self.block_size, self.objective = lm, block_size, objective
        self.num_blocks = lm.num_layers // block_size
        # chunks of similar token length: 24 % padded tokens on the 96 ARC-Easy search questions, 42 % by characters
        tokens = packed_lengths(lm.tokenizer, examples)
        order = [examples[i] for i in sorted(range(len(examples)), key=lambda i: (tokens[i], i))]
        self.chunks: list[_Chunk] = []
        with torch.inference_mode():
            for lo in range(0, len(order), chunk_size):
                batch = pack_questions(lm.tokenizer, order[lo : lo + chunk_size], lm.pad_token_id).to(lm.device)
                hidden, inputs = packed_inputs(lm, batch)
                real = torch.arange(hidden.shape[1], device=hidden.device)[None] < batch.lengths[:, None]
                self.chunks.append(_Chunk(batch, hidden, inputs, real))
        self.n = len(order)
        self.layer_calls = 0

    @torch.inference_mode()
    def run_blocks(self, chunk: _Chunk, hidden: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
        for b in blocks:
            for layer in range(b * self.block_size, (b + 1) * self.block_size):
                hidden = self.lm.run_layer(layer, hidden, chunk.inputs)
        self.layer_calls += len(blocks) * self.block_size * hidden.shape[0]
        return hidden

    @torch.inference_mode()
    def score(self, chunk: _Chunk, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) objective and (B,) correct."""
        scores = choice_scores(self.lm, chunk.batch, self.lm.norm(hidden))
        correct = scores.correct
        return task_term(self.objective, correct, scores.margin, choice_gold_logprob(scores)), correct

    def states(self, skipped: set[int]) -> list[list[torch.Tensor]]:
        """Per chunk, the hidden state before each block 0..B-1 and after the last (B + 1 states)."""
        out = []
        for chunk in self.chunks:
            hidden, seq = chunk.embedded, [chunk.embedded]
            for b in range(self.num_blocks):
                if b not in skipped:
                    hidden = self.run_blocks(chunk, hidden, [b])
                seq.append(hidden)
            out.append(seq)
        return out

    def evaluate_from(
        self, states: list[list[torch.Tensor]], start: int, blocks: Sequence[int], keep: bool = False
    ) -> tuple[float, float, list[list[torch.Tensor]] | None]:
        """Mean (objective, accuracy) of: the state before block ``start``, then ``blocks`` (ascending,
        all > ``start``; ``start`` itself is skipped). With ``keep``, also the new program's states."""
        prob = acc = 0.0
        kept: list[list[torch.Tensor]] | None = [] if keep else None
        todo = set(blocks)
        for chunk, seq in zip(self.chunks, states, strict=True):
            hidden = seq[start]
            new_seq = seq[: start + 1] + [hidden]
            for b in range(start + 1, self.num_blocks):
                if b in todo:
                    hidden = self.run_blocks(chunk, hidden, [b])
                new_seq.append(hidden)
            p, c = self.score(chunk, hidden)
            prob += float(p.sum())
            acc += float(c.float().sum())
            if kept is not None:
                kept.append(new_seq)
        return prob / self.n, acc / self.n, kept


def program_accuracies(lm: LayerModel, examples: Sequence[MCExample], programs: dict[str, list[int]],
                       block_size: int = 1, chunk_size: int = 16) -> dict[str, float]:
    """Accuracy of each skip/execute program (run counts 0 / 1 per block) on ``examples``.

    One pass of the full program per chunk; each program branches off it at its first skipped block,
    so programs that agree on a prefix share its layer calls."""
    if not examples:
        raise ValueError("no examples to compare static programs on")
    scorer = ProgramScorer(lm, examples, block_size, chunk_size)
    B = scorer.num_blocks
    for name, runs in programs.items():
        if len(runs) != B or any(r not in (0, 1) for r in runs):
            raise ValueError(f"program {name!r}: {runs} is not {B} run counts of 0 or 1")
    first_skip = {name: runs.index(0) if 0 in runs else B for name, runs in programs.items()}
    correct = dict.fromkeys(programs, 0.0)
    last = max(first_skip.values(), default=0)
    with torch.inference_mode():
        for chunk in scorer.chunks:
            hidden = chunk.embedded
            for b in range(last + 1):
                for name, runs in programs.items():
                    if first_skip[name] == b:
                        rest = [x for x in range(b + 1, B) if runs[x]]
                        _, ok = scorer.score(chunk, scorer.run_blocks(chunk, hidden, rest))
                        correct[name] += float(ok.float().sum())
                if b < last:
                    hidden = scorer.run_blocks(chunk, hidden, [b])
    return {name: c / scorer.n for name, c in correct.items()}


def cached_program_accuracies(lm: LayerModel, examples: Sequence[MCExample], programs: dict[str, list[int]],
                              block_size: int = 1, dtype: str = "float32") -> dict[str, float]:
    """:func:`program_accuracies`, with each program's accuracy on this exact question set kept on disk
    (``$POLAR_RL_CACHE/programs/selection__<model>__<dtype>__<device>__<questions digest>.json``), so sweep
    trials and seeds that compare the same candidates run each once."""
    from polar_rl.agents.reference_store import FORMAT, SCORING
    from polar_rl.agents.run_dir import slug, write_json_atomic
    from polar_rl.models.loading import cache_root

    device = lm.device.type
    path = cache_root() / "programs" / (f"selection__{slug(lm.model_hash)}__{slug(dtype)}__{slug(device)}__"
                                        f"{examples_digest(examples)}.json")
    key = {name: f"b{block_size}:" + "".join(map(str, runs)) for name, runs in programs.items()}
    cached: dict[str, float] = {}
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") == FORMAT and raw.get("scoring") == SCORING:
            cached = {k: float(v) for k, v in raw["accuracy"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        cached = {}
    todo = {name: runs for name, runs in programs.items() if key[name] not in cached}
    if todo:
        got = program_accuracies(lm, examples, todo, block_size)
        cached.update({key[name]: acc for name, acc in got.items()})
        try:
            write_json_atomic(path, {"format": FORMAT, "scoring": SCORING, "n": len(examples),
                                     "accuracy": dict(sorted(cached.items()))})
        except OSError as e:
            print(f"warning: could not write the program cache {path}: {e}")
    return {name: cached[key[name]] for name in programs}


def block_influence(scorer: ProgramScorer, states: list[list[torch.Tensor]]) -> list[float]:
    """ShortGPT BI per block: 1 - cosine(input, output), mean over the real tokens of every question."""
    total = np.zeros(scorer.num_blocks)
    tokens = 0
    for chunk, seq in zip(scorer.chunks, states, strict=True):
        mask = chunk.real
        tokens += int(mask.sum())
        for b in range(scorer.num_blocks):
            cos = torch.nn.functional.cosine_similarity(seq[b], seq[b + 1], dim=-1)  # (B, T)
            total[b] += float((1 - cos)[mask].sum())
    return (total / max(1, tokens)).tolist()


def search_static_programs(
    lm: LayerModel,
    examples: Sequence[MCExample],
    *,
    task: str,
    split: str,
    block_size: int = 1,
    min_compute: float = 0.6,
    greedy_candidates: int = 4,
    objective: str = "gold_prob",
    progress: Callable[[str], None] | None = None,
) -> StaticBaselines:
    """Run the BI, single-skip and greedy searches on ``examples``, keeping ``objective`` high."""
    if len(examples) == 0:
        raise ValueError(f"{task} split {split!r} has no examples to search static programs on")
    check_fits(lm, examples)  # the search runs shortest first: without this a too-long row fails last
    start_time = time.perf_counter()
    scorer = ProgramScorer(lm, examples, block_size, objective=objective)
    B = scorer.num_blocks
    K = max_skips(B, min_compute)
    say = progress or (lambda msg: None)

    states = scorer.states(set())
    bi = block_influence(scorer, states)
    full_obj, full_acc, _ = scorer.evaluate_from(states, B, [])
    no_cache = B * scorer.n

    skipped: list[int] = []
    known_cost = {b: math.inf for b in range(B)}
    order, objectives, accuracies = [], [], []
    skip_alone: list[float] = []
    current_obj = full_obj
    for step in range(K):
        free = [b for b in range(B) if b not in skipped]
        if step == 0 or greedy_candidates <= 0:
            candidates = free
        else:
            candidates = sorted(free, key=lambda b: known_cost[b])[:greedy_candidates]
        results: dict[int, tuple[float, float]] = {}
        best, best_states = -1, None
        for b in candidates:
            rest = [x for x in free if x > b]
            prob, acc, kept = scorer.evaluate_from(states, b, rest, keep=True)
            results[b] = (prob, acc)
            no_cache += (len(free) - 1) * block_size * scorer.n
            known_cost[b] = current_obj - prob
            if best < 0 or prob > results[best][0]:  # keep the states of the best candidate only
                best, best_states = b, kept
        if step == 0:
            skip_alone = [full_obj - results[b][0] for b in range(B)]
        skipped.append(best)
        current_obj, acc = results[best]
        order.append(best)
        objectives.append(current_obj)
        accuracies.append(acc)
        say(f"greedy k={step + 1}: skip {sorted(skipped)} {objective} {current_obj:.4f} acc {acc:.3f}")
        states = best_states  # type: ignore[assignment]

    return StaticBaselines(
        model_hash=lm.model_hash, task=task, split=split, n_examples=scorer.n, num_layers=lm.num_layers,
        block_size=block_size, max_k=K, full_objective=full_obj, full_accuracy=full_acc, block_influence=bi,
        skip_alone=skip_alone, greedy_order=order, greedy_objective=objectives, greedy_accuracy=accuracies,
        search_layer_calls=scorer.layer_calls, search_layer_calls_no_cache=no_cache,
        seconds=time.perf_counter() - start_time,
        settings={"min_compute": min_compute, "greedy_candidates": greedy_candidates}, objective=objective,
    )


# ---- the disk cache ------------------------------------------------------------------------------


def examples_digest(examples: Sequence[MCExample]) -> str:
    """Hash of a search set: each example's id and content (context, choices, gold) and the scoring rule."""
    import hashlib

    from polar_rl.agents.reference_store import example_hash

    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}:{example_hash(ex)}\n".encode())
    return h.hexdigest()[:16]


class BaselineStore:
    """One cached search: model hash (+ dtype), task, split, search size, block size and settings."""

    def __init__(self, model_hash: str, task: str, split: str, n: int, block_size: int, min_compute: float,
                 greedy_candidates: int, dtype: str = "float32", root: Path | None = None,
                 objective: str = "gold_prob") -> None:
        model_key = model_hash if dtype == "float32" else f"{model_hash}-{dtype}"
        folder = (root if root is not None else cache_root()) / "baselines"
        name = f"{model_key}__{slug(task)}__{slug(split)}__n{n}__b{block_size}__c{min_compute:g}__m{greedy_candidates}"
        if objective != "gold_prob":  # the original searches kept their names
            name += f"__{slug(objective)}"
        self.path = folder / f"{name}.json"
        self.model_hash = model_hash

    def expect(self, examples: Sequence[MCExample], device: str) -> None:
        """Reuse a cached search only if it ran on these examples (content, not just names) and this device kind."""
        self.identity = {"examples_sha256": examples_digest(examples), "device": device.split(":")[0]}

    def load(self) -> StaticBaselines | None:
        if not self.path.is_file():
            return None
        try:
            found = StaticBaselines.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            print(f"warning: ignoring unreadable baseline cache {self.path}: {e}")
            return None
        if found.model_hash != self.model_hash:  # never reuse another model's search
            print(f"warning: baseline cache {self.path} is for model {found.model_hash}, not {self.model_hash}; "
                  f"searching again")
            return None
        identity = getattr(self, "identity", {})
        stored = {key: found.settings.get(key) for key in identity}
        if stored != identity:  # edited data under the same task name, or another device: stale
            print(f"warning: baseline cache {self.path} was searched on other data or another device "
                  f"({stored} vs {identity}); searching again")
            return None
        return found

    def save(self, found: StaticBaselines) -> None:
        found.settings.update(getattr(self, "identity", {}))
        try:
            write_json_atomic(self.path, found.to_dict())
        except OSError as e:  # an optional cache never costs a run
            print(f"warning: could not write the baseline cache {self.path}: {e}")


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
    import sys

    Console(width=None if sys.stdout.isatty() else 200).print(table)
    print(f"search: {found.search_layer_calls} question-layer calls with prefix sharing vs "
          f"{found.search_layer_calls_no_cache} without ({found.seconds:.0f} s)")


# ---- command line ------------------------------------------------------------------------------


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from polar_rl.config_sources import add_config_arguments

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (model, task, env.block_size, baselines.*)")
    parser.add_argument("--split", default=None, help="split to search on (default: task.train_split)")
    parser.add_argument("--limit", type=int, default=None, help="questions to search on (default: baselines.search_limit)")
    add_config_arguments(parser)
    return parser


def run_cli(argv: Sequence[str], prog: str = "polar-rl baselines") -> int:
    from polar_rl.agents.evaluate import load_lm
    from polar_rl.config import ConfigError
    from polar_rl.config_sources import load_config, overrides_from_args

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
