"""Disk cache of the full model's result per example, so each split is run in full only once.

A cached result is reused only when everything that determines it is the same:

- the model: its weights hash (:func:`polar_rl.models.loading.model_hash`: the verified manifest of
  a converted model, the content of a local folder, or the resolved commit of a hub id), the dtype
  and the device kind (cpu / cuda / mps round differently) name the file
  ``$POLAR_RL_CACHE/reference/<model_hash>__<dtype>__<device>__<task>__<split>.json``;
- the example: each entry stores a hash of the example's content (context, choices, gold) and of
  the scoring rule (:data:`SCORING`); an entry whose hash differs from the example's now (the task's
  data was edited under the same name) is stale: it is dropped on load and recomputed, never reused.

The file holds ``{"format": 2, "model_hash", "dtype", "device", "entries": {example id ->
{"example": hash, "correct", "margin", "gold_logprob"}}}``. The full model's measured seconds per
question sit beside it (``<stem>.meta.json``), keyed by the question set they were measured on
(:func:`questions_digest`): a ``--limit`` subset, or another task under the same name, never
replaces the timing of the whole split. Load it into the ``reference`` dict an
engine is given (the engine fills in the examples it is missing), and save the dict back after the
run. Writing is optional: a cache folder that cannot be written costs a warning, never the run.
Files of the first format (``<model_hash>__<task>__<split>.json``, entries without content hashes)
cannot be verified and are not read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polar_rl.agents.run_dir import slug, write_json_atomic
from polar_rl.envs.engine import Reference
from polar_rl.models.loading import cache_root
from polar_rl.tasks.examples import MCExample, Task

FORMAT = 2
MAX_TIMINGS = 16  # question sets whose timing a meta file (or a cached program) keeps, newest last
#: what a cached value means: bump when choice scoring, the margin or the gold log-prob change
SCORING = "rc: sum log p(choice | context), packed choices; margin = gold - best other; gold_logprob over choices; v1"


def _read_section(path: Path, identity: tuple, section: str, what: str) -> dict[str, dict]:
    """The mapping ``section`` of a cache file written for ``identity`` (format, model hash, dtype, device);
    empty, with a warning, when the file is for something else or unreadable (a cache never costs a run)."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        found = (raw["format"], raw["model_hash"], raw["dtype"], raw["device"])
        if found != identity:
            print(f"warning: ignoring {what} cache {path}: it is for {found}, not {identity}")
            return {}
        data = raw[section]
        if not isinstance(data, dict):
            raise TypeError(f"{section} is {type(data).__name__}, not a mapping")
        return data
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warning: ignoring unreadable {what} cache {path}: {e}")
        return {}


def questions_digest(hashes: dict[str, str]) -> str:
    """Identity of a question set (order aside): each example's id and content hash."""
    payload = "".join(f"{key}:{hashes[key]}\n" for key in sorted(hashes))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _timings(raw: object) -> dict[str, float]:
    """A stored {question-set digest: seconds per example} mapping (anything else, e.g. the old single
    number that belonged to whichever set ran last: empty)."""
    if not isinstance(raw, dict):
        return {}
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _with_timing(timings: dict[str, float], digest: str, seconds: float) -> dict[str, float]:
    """``timings`` with ``digest``'s newest measurement, keeping the :data:`MAX_TIMINGS` newest sets."""
    out = {k: v for k, v in timings.items() if k != digest}
    out[digest] = float(seconds)
    return dict(list(out.items())[-MAX_TIMINGS:])


def example_hash(example: MCExample) -> str:
    """Hash of what the full model's result on ``example`` depends on: its content and the scoring rule."""
    payload = json.dumps({"context": example.context, "choices": list(example.choices), "gold": example.gold,
                          "scoring": SCORING}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class ReferenceStore:
    """The cached full-model results of one (model, dtype, device kind, task, split)."""

    def __init__(self, model_hash: str, task: Task, dtype: str = "float32", device: str = "cpu",
                 root: Path | None = None) -> None:
        self.model_hash, self.dtype, self.device = model_hash, dtype, device.split(":")[0]
        self.hashes = {ex.id: example_hash(ex) for ex in task.examples if isinstance(ex, MCExample)}
        folder = (root if root is not None else cache_root()) / "reference"
        stem = f"{slug(model_hash)}__{slug(dtype)}__{slug(self.device)}__{slug(task.name)}__{slug(task.split)}"
        self.path = folder / f"{stem}.json"
        self.meta_path = folder / f"{stem}.meta.json"
        self.stale = 0  # entries dropped by the last load because their example changed

    def _read_entries(self) -> dict[str, dict]:
        """The file's entries when it is for this model, dtype and device (else empty)."""
        return _read_section(self.path, (FORMAT, self.model_hash, self.dtype, self.device), "entries", "reference")

    @staticmethod
    def _reference(entry: dict) -> Reference:
        correct, margin, gold_lp = entry["correct"], entry["margin"], entry["gold_logprob"]
        if not isinstance(correct, bool) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                    for v in (margin, gold_lp)):
            raise TypeError(f"bad types in entry {entry!r}")
        return Reference(correct, float(margin), float(gold_lp))

    def load(self) -> dict[str, Reference]:
        """The cached results of this task's examples whose content and scoring rule are unchanged."""
        out: dict[str, Reference] = {}
        self.stale = 0
        for key, entry in self._read_entries().items():
            want = self.hashes.get(key)
            if want is None:
                continue
            try:
                if entry["example"] != want:
                    self.stale += 1
                    continue
                out[key] = self._reference(entry)
            except (KeyError, TypeError) as e:
                print(f"warning: reference cache {self.path}: recomputing {key!r} ({e})")
        if self.stale:
            print(f"warning: reference cache {self.path}: {self.stale} examples changed since they were cached; "
                  f"recomputing them")
        return out

    def save(self, reference: dict[str, Reference]) -> bool:
        """Merge this task's entries of ``reference`` into the file (atomically; other entries are kept,
        stale ones replaced). Returns False, with a warning, when the cache cannot be written."""
        entries = self._read_entries()
        for key, ref in reference.items():
            if key in self.hashes:
                entries[key] = {"example": self.hashes[key], "correct": bool(ref.correct), "margin": float(ref.margin),
                                "gold_logprob": float(ref.gold_logprob)}
        data = {"format": FORMAT, "model_hash": self.model_hash, "dtype": self.dtype, "device": self.device,
                "scoring": SCORING, "entries": dict(sorted(entries.items()))}
        try:
            write_json_atomic(self.path, data)
        except OSError as e:  # an optional cache never costs a run
            print(f"warning: could not write the reference cache {self.path}: {e}")
            return False
        return True

    def _read_seconds(self) -> dict[str, float]:
        """{question-set digest: seconds per example} of the meta file."""
        try:
            return _timings(json.loads(self.meta_path.read_text())["seconds_per_example"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def load_seconds(self) -> float | None:
        """Wall seconds per example of the full model's last measured pass on exactly this task's
        questions (this split, or this ``--limit`` subset of it), if cached."""
        return self._read_seconds().get(questions_digest(self.hashes))

    def save_seconds(self, seconds: float) -> None:
        """Keep ``seconds`` per example as measured on this task's questions (other sets' timings stay)."""
        timings = _with_timing(self._read_seconds(), questions_digest(self.hashes), seconds)
        try:
            write_json_atomic(self.meta_path, {"format": FORMAT, "seconds_per_example": timings})
        except OSError as e:
            print(f"warning: could not write the reference cache {self.meta_path}: {e}")


def reference_store(lm: object, task: Task, dtype: str) -> ReferenceStore:
    """The store for ``lm`` (its model hash and device kind) on ``task``."""
    return ReferenceStore(lm.model_hash, task, dtype, lm.device.type)  # type: ignore[attr-defined]


class ProgramResultStore:
    """Disk cache of static programs' per-example records on one (model, dtype, device kind, task, split).

    A static program's result on an example depends on the same things as the full model's (the
    weights, dtype, device kind, the example's content and the scoring rule) and on the program
    itself, so seeds and sweep trials that compare against the same static programs run each only once.
    ``$POLAR_RL_CACHE/programs/<model_hash>__<dtype>__<device>__<task>__<split>.json`` holds
    ``{"format", "model_hash", "dtype", "device", "programs": {<key>: {"seconds_per_example":
    {question-set digest: seconds}, "entries": {example id -> {"example": hash, "record": {...}}}}}}``.
    Entries whose example changed are dropped on load; a program is reused only when every asked
    example is cached, and its timing only for the question set it was measured on.
    """

    def __init__(self, model_hash: str, task: Task, dtype: str = "float32", device: str = "cpu",
                 root: Path | None = None) -> None:
        self.model_hash, self.dtype, self.device = model_hash, dtype, device.split(":")[0]
        self.hashes = {ex.id: example_hash(ex) for ex in task.examples if isinstance(ex, MCExample)}
        folder = (root if root is not None else cache_root()) / "programs"
        stem = f"{slug(model_hash)}__{slug(dtype)}__{slug(self.device)}__{slug(task.name)}__{slug(task.split)}"
        self.path = folder / f"{stem}.json"

    @staticmethod
    def key(runs: Sequence[int], block_size: int, loop_runs: int) -> str:
        """``b<block size>l<calls of a LOOP>:<action per block>``: what decides the layer calls."""
        return f"b{block_size}l{loop_runs}:" + "".join(str(int(r)) for r in runs)

    def _read(self) -> dict[str, dict]:
        return _read_section(self.path, (FORMAT, self.model_hash, self.dtype, self.device), "programs", "program")

    def load(self, runs: Sequence[int], block_size: int, loop_runs: int,
             example_ids: Sequence[str]) -> tuple[list[dict[str, Any]], float | None] | None:
        """The cached records of ``runs`` on ``example_ids`` (in that order) and seconds per example,
        or None unless every example is cached with its current content."""
        entry = self._read().get(self.key(runs, block_size, loop_runs))
        if not isinstance(entry, dict):
            return None
        entries = entry.get("entries", {})
        records = []
        for ex_id in example_ids:
            got = entries.get(ex_id)
            if not isinstance(got, dict) or got.get("example") != self.hashes.get(ex_id):
                return None
            record = got.get("record")
            if not isinstance(record, dict) or record.get("example_id") != ex_id:
                return None
            records.append(record)
        asked = questions_digest({ex_id: self.hashes[ex_id] for ex_id in example_ids})
        return records, _timings(entry.get("seconds_per_example")).get(asked)

    def save(self, results: dict[tuple[int, ...], tuple[list[dict[str, Any]], float]], block_size: int,
             loop_runs: int) -> bool:
        """Merge ``{runs: (records, seconds per example)}`` into the file (atomically). False, with a
        warning, when the cache cannot be written."""
        programs = self._read()
        for runs, (records, seconds) in results.items():
            key = self.key(runs, block_size, loop_runs)
            old = programs.get(key, {}).get("entries", {}) if isinstance(programs.get(key), dict) else {}
            new = {r["example_id"]: {"example": self.hashes[r["example_id"]], "record": r}
                   for r in records if r["example_id"] in self.hashes}
            digest = questions_digest({i: e["example"] for i, e in new.items()})
            before = programs[key].get("seconds_per_example") if isinstance(programs.get(key), dict) else None
            programs[key] = {"seconds_per_example": _with_timing(_timings(before), digest, seconds),
                             "entries": {**old, **new}}
        data = {"format": FORMAT, "model_hash": self.model_hash, "dtype": self.dtype, "device": self.device,
                "scoring": SCORING, "programs": programs}
        try:
            write_json_atomic(self.path, data)
        except OSError as e:
            print(f"warning: could not write the program cache {self.path}: {e}")
            return False
        return True


def program_store(lm: object, task: Task, dtype: str) -> ProgramResultStore:
    """The static-program result store for ``lm`` on ``task``."""
    return ProgramResultStore(lm.model_hash, task, dtype, lm.device.type)  # type: ignore[attr-defined]
