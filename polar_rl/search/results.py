"""The full model's and static programs' per-example results: two views of the one store.

Both views keep their rows in :class:`polar_rl.search.store.ResultStore` (one sqlite database,
``$POLAR_RL_CACHE/results.sqlite``), keyed by the weights hash, dtype, device kind, scoring rule,
program and each example's id and content hash (:func:`example_hash`): the full model is the
identity program. An edited example is a new key (its old row is never served and is replaced on
save); the task's name is no part of the key. Seconds per example are kept per question set
(:func:`questions_digest`), so a ``--limit`` subset never replaces the timing of the whole split.
JSON cache files of the previous format (``reference/`` and ``programs/`` folders) are imported
once, with one line saying so. Writing is optional: a cache that cannot be written costs a warning,
never the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polar_rl.fileio import slug
from polar_rl.models.loading import cache_root
from polar_rl.search.store import ResultStore, StoreKey
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.rewards import SCORING, Reference, example_hash

FORMAT = 2  # of the JSON cache files this store replaces (read once, for import)


def questions_digest(hashes: dict[str, str]) -> str:
    """Identity of a question set (order aside): each example's id and content hash."""
    payload = "".join(f"{key}:{hashes[key]}\n" for key in sorted(hashes))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def examples_digest(examples: Sequence[MCExample]) -> str:
    """Hash of a search set: each example's id and content (context, choices, gold) and the scoring rule."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}:{example_hash(ex)}\n".encode())
    return h.hexdigest()[:16]


#: the program key of the full model (every block once)
IDENTITY = "identity"
#: what the two views store (part of the scoring key): the full model's scores, evaluation records
_REFERENCE, _RECORD = "reference", "record"
#: the warm start's candidate scoring (ProgramScorer's chunks; kept apart from evaluation records)
_SELECTION = "selection correct"


def _legacy_rows(path: Path, identity: tuple, section: str) -> dict[str, Any] | None:
    """The ``section`` mapping of a cache file of the previous JSON format written for ``identity``
    (format, model hash, dtype, device); None when it is absent, unreadable or for something else."""
    try:
        raw = json.loads(path.read_text())
        if (raw["format"], raw["model_hash"], raw["dtype"], raw["device"]) != identity:
            return None
        data = raw[section]
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _View:
    """What both views share: the store, the task's {id: content hash} and the legacy file's stem."""

    kind = ""

    def __init__(self, model_hash: str, task: Task, dtype: str = "float32", device: str = "cpu",
                 root: Path | None = None) -> None:
        self.model_hash, self.dtype, self.device = model_hash, dtype, device.split(":")[0]
        self.root = root if root is not None else cache_root()
        self.hashes = {ex.id: example_hash(ex) for ex in task.examples if isinstance(ex, MCExample)}
        self.store = ResultStore(StoreKey(model_hash, dtype, self.device, f"{SCORING}; {self.kind}"), self.root)
        self.path = self.store.path
        self._stem = f"{slug(model_hash)}__{slug(dtype)}__{slug(self.device)}__{slug(task.name)}__{slug(task.split)}"

    def _import_legacy(self, folder: str, section: str, rows_of: Any) -> None:
        path = self.root / folder / f"{self._stem}.json"
        data = _legacy_rows(path, (FORMAT, self.model_hash, self.dtype, self.device), section) if path.is_file() else None
        if data is not None and self.store.import_once(path, rows_of(data)):
            print(f"note: imported the {folder} cache {path} (JSON, previous format) into {self.store.path}")


class ReferenceStore(_View):
    """The cached full-model results (the identity program) of one task on one model, dtype, device kind."""

    kind = _REFERENCE

    def __init__(self, model_hash: str, task: Task, dtype: str = "float32", device: str = "cpu",
                 root: Path | None = None) -> None:
        super().__init__(model_hash, task, dtype, device, root)
        self.stale = 0  # examples whose cached result is for older content (recomputed)
        self._import_legacy("reference", "entries", lambda entries: [
            (IDENTITY, i, e["example"], {k: e[k] for k in ("correct", "margin", "gold_logprob")})
            for i, e in entries.items() if isinstance(e, dict) and {"example", "correct", "margin", "gold_logprob"} <= set(e)])

    @staticmethod
    def _reference(entry: dict) -> Reference:
        correct, margin, gold_lp = entry["correct"], entry["margin"], entry["gold_logprob"]
        if not isinstance(correct, bool) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                    for v in (margin, gold_lp)):
            raise TypeError(f"bad types in entry {str(entry)[:200]}")
        return Reference(correct, float(margin), float(gold_lp))

    def load(self) -> dict[str, Reference]:
        """The cached results of this task's examples whose content and scoring rule are unchanged."""
        out: dict[str, Reference] = {}
        for key, entry in self.store.load(IDENTITY, self.hashes).items():
            try:
                out[key] = self._reference(entry)
            except (KeyError, TypeError) as e:
                print(f"warning: reference cache {self.path}: recomputing {key!r} ({e})")
        self.stale = self.store.stale(IDENTITY, self.hashes)
        if self.stale:
            print(f"warning: reference cache {self.path}: {self.stale} examples changed since they were cached; "
                  f"recomputing them")
        return out

    def save(self, reference: dict[str, Reference]) -> bool:
        """Store this task's entries of ``reference`` (other rows are kept, an edited example's replaced).
        Returns False, with a warning, when the cache cannot be written."""
        return self.store.save(IDENTITY, [
            (key, self.hashes[key], {"correct": bool(ref.correct), "margin": float(ref.margin),
                                     "gold_logprob": float(ref.gold_logprob)})
            for key, ref in reference.items() if key in self.hashes])

    def load_seconds(self) -> float | None:
        """Wall seconds per example of the full model's last measured pass on exactly this task's
        questions (this split, or this ``--limit`` subset of it), if cached."""
        return self.store.load_seconds(IDENTITY, questions_digest(self.hashes))

    def save_seconds(self, seconds: float) -> None:
        """Keep ``seconds`` per example as measured on this task's questions (other sets' timings stay)."""
        self.store.save_seconds(IDENTITY, questions_digest(self.hashes), seconds)


def reference_store(lm: object, task: Task, dtype: str) -> ReferenceStore:
    """The store for ``lm`` (its model hash and device kind) on ``task``."""
    return ReferenceStore(lm.model_hash, task, dtype, lm.device.type)  # type: ignore[attr-defined]


class ProgramResultStore(_View):
    """Static programs' per-example evaluation records on one task, model, dtype and device kind.

    A static program's result on an example depends on the same things as the full model's and on
    the program itself, so seeds and sweep trials that compare against the same static programs run
    each only once. A program is reused only when every asked example is cached with its current
    content, and its timing only for the question set it was measured on.
    """

    kind = _RECORD

    def __init__(self, model_hash: str, task: Task, dtype: str = "float32", device: str = "cpu",
                 root: Path | None = None) -> None:
        super().__init__(model_hash, task, dtype, device, root)
        self._import_legacy("programs", "programs", lambda programs: [
            (key, i, e["example"], e["record"]) for key, entry in programs.items() if isinstance(entry, dict)
            for i, e in (entry.get("entries") or {}).items()
            if isinstance(e, dict) and isinstance(e.get("record"), dict) and "example" in e])

    @staticmethod
    def key(runs: Sequence[int], block_size: int, loop_runs: int) -> str:
        """``b<block size>l<calls of a LOOP>:<action per block>``: what decides the layer calls."""
        return f"b{block_size}l{loop_runs}:" + "".join(str(int(r)) for r in runs)

    def load(self, runs: Sequence[int], block_size: int, loop_runs: int,
             example_ids: Sequence[str]) -> tuple[list[dict[str, Any]], float | None] | None:
        """The cached records of ``runs`` on ``example_ids`` (in that order) and seconds per example,
        or None unless every example is cached with its current content."""
        asked = {ex_id: self.hashes[ex_id] for ex_id in example_ids if ex_id in self.hashes}
        if len(asked) != len(example_ids):
            return None
        key = self.key(runs, block_size, loop_runs)
        found = self.store.load(key, asked)
        records = [found.get(ex_id) for ex_id in example_ids]
        if any(r is None or r.get("example_id") != ex_id for r, ex_id in zip(records, example_ids, strict=True)):
            return None
        return records, self.store.load_seconds(key, questions_digest(asked))  # type: ignore[return-value]

    def save(self, results: dict[tuple[int, ...], tuple[list[dict[str, Any]], float]], block_size: int,
             loop_runs: int) -> bool:
        """Store ``{runs: (records, seconds per example)}`` (each record under its example). False, with
        a warning, when the cache cannot be written."""
        ok = True
        for runs, (records, seconds) in results.items():
            key = self.key(runs, block_size, loop_runs)
            rows = [(r["example_id"], self.hashes[r["example_id"]], r) for r in records if r["example_id"] in self.hashes]
            ok = self.store.save(key, rows) and ok
            if rows:
                ok = self.store.save_seconds(key, questions_digest({i: h for i, h, _ in rows}), seconds) and ok
        return ok


def program_store(lm: object, task: Task, dtype: str) -> ProgramResultStore:
    """The static-program result store for ``lm`` on ``task``."""
    return ProgramResultStore(lm.model_hash, task, dtype, lm.device.type)  # type: ignore[attr-defined]


def cached_program_accuracies(lm: Any, examples: Sequence[MCExample], programs: dict[str, list[int]],
                              block_size: int = 1, dtype: str = "float32", root: Path | None = None) -> dict[str, float]:
    """:func:`polar_rl.search.runner.program_accuracies`, each program's per-example correctness kept in the
    store, so sweep trials and seeds that compare the same candidates run each (program, example) once."""
    from polar_rl.search.runner import program_correct

    hashes = {ex.id: example_hash(ex) for ex in examples}
    store = ResultStore(StoreKey(lm.model_hash, dtype, lm.device.type, f"{SCORING}; {_SELECTION}"),
                        root if root is not None else cache_root())
    key = {name: f"b{block_size}:" + "".join(map(str, runs)) for name, runs in programs.items()}
    found = {name: store.load(key[name], hashes) for name in programs}
    todo = {name: runs for name, runs in programs.items() if len(found[name]) < len(hashes)}
    if todo:
        missing = {i for name in todo for i in hashes if i not in found[name]}
        got = program_correct(lm, [ex for ex in examples if ex.id in missing], todo, block_size)
        for name, ok in got.items():
            store.save(key[name], [(i, hashes[i], {"correct": c}) for i, c in ok.items()])
            found[name].update({i: {"correct": c} for i, c in ok.items()})
    return {name: sum(bool(found[name][i]["correct"]) for i in hashes) / len(hashes) for name in programs}
