"""The static-program search: one program for every input, chosen on the train split only.

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

:func:`search_static_programs` runs the searches (through :class:`polar_rl.search.runner.ProgramScorer`)
and returns :class:`StaticBaselines`, which names each family's program at each k;
:class:`BaselineStore` caches a whole search (``$POLAR_RL_CACHE/baselines/``) by model hash, dtype,
task, split, settings and the search set's content (a file for another model or set is never reused).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polar_rl.config import BASELINE_FAMILIES as FAMILIES
from polar_rl.fileio import slug, write_json_atomic
from polar_rl.models.adapter import LayerModel
from polar_rl.models.loading import cache_root
from polar_rl.search.results import examples_digest
from polar_rl.search.runner import ProgramScorer
from polar_rl.tasks.examples import MCExample
from polar_rl.tasks.multiple_choice import check_fits

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
    objective: str = "gold_prob"  # the task term the search keeps high (see polar_rl.tasks.rewards.task_term)

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
