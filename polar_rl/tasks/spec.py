"""Multiple-choice task specs (YAML or dict): read any row source and turn rows into ``MCExample``s.

Spec keys::

    name: my_set
    source: {path: data/my.jsonl}   # or {disk: saved_folder[, split: x]} or {hub: org/name, config: x, split: validation}
    id_column: id                   # optional; default = row index as a string
    context: "Question: {question}\\nAnswer:"   # str.format over columns ("{a.b}" reaches nested fields)
    choices: {column: choices}      # a list column, or {columns: [sol1, sol2]}
    choice_prefix: " "              # prepended to each choice (default " ")
    gold: {column: answerKey, type: letter}   # index (optional offset) | letter (A/B/.. or 1/2/..) | text
    splits: {train: 0.7, val: 0.15, test: 0.15}   # optional hash ratios

Example ids are ``"<name>/<id>"``. Relative paths resolve against the spec file's folder first, then the
working directory. Local paths pick the ``datasets`` builder by extension (json/jsonl/parquet/csv/tsv,
optionally compressed). Only ``hub`` sources may touch the network.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from polar_rl.models.loading import offline
from polar_rl.tasks.examples import MCExample, TaskError
from polar_rl.tasks.splits import DEFAULT_RATIOS, check_ratios

SPEC_KEYS = frozenset(
    {"name", "source", "id_column", "context", "choices", "choice_prefix", "gold", "splits", "description"}
)
SOURCE_KINDS = ("path", "disk", "hub")
GOLD_TYPES = ("index", "letter", "text")
_BUILDERS = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv", "tsv": "csv"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


@dataclass(frozen=True)
class MCSpec:
    """A validated multiple-choice spec (structure only; columns are checked against the rows)."""

    name: str
    source: tuple[str, str, str | None, str | None]  # (kind, location, config, split)
    context: str
    choice_columns: tuple[str, ...]  # one list column, or several scalar columns
    choices_is_list: bool
    gold_column: str
    gold_type: str
    gold_offset: int = 0
    id_column: str | None = None
    choice_prefix: str = " "
    ratios: tuple[tuple[str, float], ...] = tuple(DEFAULT_RATIOS.items())


def resolve_path(raw: str | Path, base_dir: Path | None) -> Path:
    """Resolve a spec-relative path: the spec file's folder first, then the working directory."""
    p = Path(raw).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = ([base_dir / p] if base_dir is not None else []) + [Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    raise TaskError(f"path {str(raw)!r} not found (tried {', '.join(str(c) for c in candidates)})")


def _require(spec: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in spec or spec[key] is None:
        raise TaskError(f"{where}: missing required key {key!r}")
    return spec[key]


def _parse_source(src: Any, where: str, base_dir: Path | None) -> tuple[str, str, str | None, str | None]:
    if isinstance(src, str):  # shorthand: `source: data/my.jsonl`
        src = {"path": src}
    if not isinstance(src, Mapping):
        raise TaskError(f"{where}: 'source' must be a mapping like {{path: file.jsonl}}, got {src!r}")
    kinds = [k for k in SOURCE_KINDS if k in src]
    extra = set(src) - set(SOURCE_KINDS) - {"config", "split"}
    if len(kinds) != 1 or extra:
        raise TaskError(
            f"{where}: unknown source kind {sorted(set(src) - {'config', 'split'})}; "
            f"give exactly one of {list(SOURCE_KINDS)} (plus optional 'config', 'split')"
        )
    kind = kinds[0]
    config, split = src.get("config"), src.get("split")
    if kind == "hub":
        if not split:
            raise TaskError(f"{where}: a hub source needs 'split' (e.g. validation)")
        return kind, str(src["hub"]), config, str(split)
    location = str(resolve_path(src[kind], base_dir))
    return kind, location, config, None if split is None else str(split)


def _parse_choices(ch: Any, where: str) -> tuple[tuple[str, ...], bool]:
    if isinstance(ch, str):
        return (ch,), True
    if isinstance(ch, Mapping) and len(ch) == 1 and isinstance(ch.get("column"), str):
        return (ch["column"],), True
    if isinstance(ch, Mapping) and len(ch) == 1 and isinstance(ch.get("columns"), Sequence):
        cols = tuple(str(c) for c in ch["columns"])
        if cols and not isinstance(ch["columns"], str):
            return cols, False
    raise TaskError(
        f"{where}: 'choices' must be {{column: <list column>}} or {{columns: [a, b, ...]}}, got {ch!r}"
    )


def _parse_gold(gold: Any, where: str) -> tuple[str, str, int]:
    if isinstance(gold, str):
        gold = {"column": gold}
    if not isinstance(gold, Mapping) or not isinstance(gold.get("column"), str):
        raise TaskError(f"{where}: 'gold' must be like {{column: label, type: index}}, got {gold!r}")
    extra = set(gold) - {"column", "type", "offset"}
    if extra:
        raise TaskError(f"{where}: unknown gold keys {sorted(extra)} (allowed: column, type, offset)")
    kind = gold.get("type", "index")
    if kind not in GOLD_TYPES:
        raise TaskError(f"{where}: unknown gold type {kind!r}; choose from {list(GOLD_TYPES)}")
    offset = gold.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TaskError(f"{where}: gold offset must be an integer, got {offset!r}")
    if offset and kind != "index":
        raise TaskError(f"{where}: gold offset only applies to type 'index', not {kind!r}")
    return gold["column"], kind, offset


def parse_spec(
    spec: Mapping[str, Any], *, base_dir: Path | None = None, default_name: str | None = None
) -> MCSpec:
    """Validate a spec mapping's structure (keys, kinds, template syntax, ratios)."""
    if not isinstance(spec, Mapping):
        raise TaskError(f"a task spec must be a mapping, got {type(spec).__name__}")
    name = spec.get("name") or default_name
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"task spec needs a non-empty string 'name', got {spec.get('name')!r}")
    where = f"task spec {name!r}"
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise TaskError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    context = _require(spec, "context", where)
    if not isinstance(context, str):
        raise TaskError(f"{where}: 'context' must be a string template, got {context!r}")
    _template_fields(context, where)  # syntax check now, columns later
    cols, is_list = _parse_choices(_require(spec, "choices", where), where)
    gold_col, gold_type, offset = _parse_gold(_require(spec, "gold", where), where)
    prefix = spec.get("choice_prefix", " ")
    if not isinstance(prefix, str):
        raise TaskError(f"{where}: 'choice_prefix' must be a string, got {prefix!r}")
    id_col = spec.get("id_column")
    if id_col is not None and not isinstance(id_col, str):
        raise TaskError(f"{where}: 'id_column' must be a column name, got {id_col!r}")
    ratios = spec.get("splits") or DEFAULT_RATIOS
    if not isinstance(ratios, Mapping):
        raise TaskError(f"{where}: 'splits' must map split names to ratios, got {ratios!r}")
    try:
        checked = check_ratios(ratios)
    except TaskError as e:
        raise TaskError(f"{where}: {e}") from None
    return MCSpec(
        name=name.strip(),
        source=_parse_source(_require(spec, "source", where), where, base_dir),
        context=context,
        choice_columns=cols,
        choices_is_list=is_list,
        gold_column=gold_col,
        gold_type=gold_type,
        gold_offset=offset,
        id_column=id_col,
        choice_prefix=prefix,
        ratios=tuple(checked.items()),
    )


# ---------------------------------------------------------------- reading rows


def _builder_for(path: Path) -> tuple[str, dict[str, Any]]:
    name = path.name.lower()
    for comp in _COMPRESSION:
        name = name.removesuffix(comp)
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    if ext not in _BUILDERS:
        raise TaskError(f"cannot read {path}: unknown extension {ext!r}; supported: {sorted(_BUILDERS)}")
    return _BUILDERS[ext], ({"delimiter": "\t"} if ext == "tsv" else {})


def _stamp(location: str) -> tuple[int, int]:
    """(newest mtime_ns, total size) of a file or folder: the in-process cache key of its contents."""
    p = Path(location)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    stats = [f.stat() for f in files]
    return max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats)


@lru_cache(maxsize=64)
def _read_rows_cached(
    kind: str, location: str, config: str | None, split: str | None, stamp: tuple[int, int]
) -> tuple[dict[str, Any], ...]:
    try:
        return _load_rows(kind, location, config, split)
    except TaskError:
        raise
    except Exception as e:  # malformed file, missing hub set, ...: say which source failed
        raise TaskError(f"cannot read {kind} source {location!r}: {type(e).__name__}: {e}") from e


def _load_rows(kind: str, location: str, config: str | None, split: str | None) -> tuple[dict[str, Any], ...]:
    import datasets

    datasets.disable_progress_bars()
    if kind == "hub":  # the only kind allowed to use the network
        ds = datasets.load_dataset(location, config, split=split)
    elif kind == "disk":
        with offline():
            ds = datasets.load_from_disk(location)
        if isinstance(ds, datasets.DatasetDict):
            if split is None or split not in ds:
                raise TaskError(
                    f"{location} holds splits {sorted(ds)}; pick one with source.split (got {split!r})"
                )
            ds = ds[split]
    else:
        builder, kwargs = _builder_for(Path(location))
        with offline():
            # force_redownload: datasets keys its cache on mtime alone, which misses quick rewrites
            ds = datasets.load_dataset(
                builder, data_files=location, split="train", download_mode="force_redownload", **kwargs
            )
            if builder == "csv":  # every cell as written: no type guessing ("007" stays "007", "NA" stays "NA")
                text = datasets.Features({c: datasets.Value("string") for c in ds.column_names})
                ds = datasets.load_dataset(
                    builder, data_files=location, split="train", download_mode="force_redownload", features=text,
                    keep_default_na=False, na_filter=False, **kwargs,
                )
    return tuple(ds.to_list())


def _source_stamp(source: tuple[str, str, str | None, str | None]) -> tuple[int, int]:
    return (0, 0) if source[0] == "hub" else _stamp(source[1])


def read_rows(source: tuple[str, str, str | None, str | None]) -> tuple[dict[str, Any], ...]:
    """All rows of a parsed source, in file order (cached per process while the file is unchanged)."""
    return _read_rows_cached(*source, _source_stamp(source))


def spec_examples(spec: MCSpec) -> tuple[MCExample, ...]:
    """The examples of a parsed spec (cached per process while its source is unchanged)."""
    return _spec_examples_cached(spec, _source_stamp(spec.source))


@lru_cache(maxsize=64)
def _spec_examples_cached(spec: MCSpec, stamp: tuple[int, int]) -> tuple[MCExample, ...]:
    return build_examples(spec, _read_rows_cached(*spec.source, stamp))


# ---------------------------------------------------------------- rows -> examples


_MISSING = object()


def _lookup(row: Mapping[str, Any], path: str) -> Any:
    """A column value; ``a.b`` reaches into nested mappings when ``a.b`` itself is not a column."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


class _RowFormatter(string.Formatter):
    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        value = _lookup(kwargs, field_name)
        if value is _MISSING:
            raise KeyError(field_name)
        return value, field_name


_FORMATTER = _RowFormatter()


def _template_fields(template: str, where: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
    except ValueError as e:
        raise TaskError(f"{where}: bad context template {template!r}: {e}") from None
    for f in fields:
        if f == "" or f.isdigit():
            raise TaskError(f"{where}: context template field {{{f}}} must name a column")
    return fields


def _check_column(rows: Sequence[Mapping[str, Any]], path: str, role: str, where: str) -> None:
    if _lookup(rows[0], path) is _MISSING:
        raise TaskError(f"{where}: {role} column {path!r} not found; available columns: {sorted(rows[0])}")


def _as_text(value: Any, what: str, where: str, allow_int: bool = False) -> str:
    """``value`` when it is a string (or, with ``allow_int``, an int: ids); anything else is an error
    naming it, never converted (a float choice 0.10 would silently become "0.1")."""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TaskError(f"{where}: {what} must be text{' or an int' if allow_int else ''}, got {value!r} "
                    f"({type(value).__name__})")


def _gold_index(value: Any, spec: MCSpec, raw_choices: Sequence[str], where: str) -> int:
    n = len(raw_choices)
    idx: int | None = None
    if spec.gold_type in ("text", "letter") and not isinstance(value, str):
        raise TaskError(f"{where}: gold of type {spec.gold_type} must be text, got {value!r} ({type(value).__name__})")
    if spec.gold_type == "index" and not (isinstance(value, int) and not isinstance(value, bool)
                                          or isinstance(value, str)):
        raise TaskError(f"{where}: gold of type index must be an int, got {value!r} ({type(value).__name__})")
    if spec.gold_type == "text":
        text = value
        if text in raw_choices:
            idx = raw_choices.index(text)
        elif text is not None and text.strip() in [c.strip() for c in raw_choices]:
            idx = [c.strip() for c in raw_choices].index(text.strip())
        if idx is None:
            raise TaskError(f"{where}: gold {value!r} is not among the choices {list(raw_choices)}")
        return idx
    if spec.gold_type == "letter":
        s = "" if value is None else str(value).strip()
        if len(s) == 1 and s.isalpha() and s.isascii():
            idx = ord(s.upper()) - ord("A")
        elif s.isdigit():
            idx = int(s) - 1
    else:  # index
        if isinstance(value, int) and not isinstance(value, bool):
            idx = value - spec.gold_offset
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():  # CSV cells are text
            idx = int(value) - spec.gold_offset
    if idx is None or not 0 <= idx < n:
        raise TaskError(
            f"{where}: gold {value!r} (type {spec.gold_type}) is not among the {n} choices {list(raw_choices)}"
        )
    return idx


def build_examples(spec: MCSpec, rows: Sequence[Mapping[str, Any]]) -> tuple[MCExample, ...]:
    """Turn rows into examples, checking columns, templates, choices, gold and id uniqueness."""
    where = f"task spec {spec.name!r}"
    if not rows:
        raise TaskError(f"{where}: source {spec.source[1]!r} has no rows (empty set)")
    for f in _template_fields(spec.context, where):
        _check_column(rows, f, "context template", where)
    for c in spec.choice_columns:
        _check_column(rows, c, "choices", where)
    _check_column(rows, spec.gold_column, "gold", where)
    if spec.id_column is not None:
        _check_column(rows, spec.id_column, "id", where)

    out: list[MCExample] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        raw_id = (
            str(i)
            if spec.id_column is None
            else _as_text(_lookup(row, spec.id_column), f"id column {spec.id_column!r}", f"{where}, row {i}",
                          allow_int=True)
        )
        at = f"{where}, row {i} (id {raw_id!r})"
        if raw_id in seen:
            raise TaskError(f"{at}: duplicate id, first seen at row {seen[raw_id]}")
        seen[raw_id] = i
        if spec.choices_is_list:
            listed = _lookup(row, spec.choice_columns[0])
            if not isinstance(listed, list | tuple):
                raise TaskError(
                    f"{at}: choices column {spec.choice_columns[0]!r} must hold a list, got {listed!r}"
                )
        else:
            listed = [_lookup(row, c) for c in spec.choice_columns]
        raw_choices = [_as_text(c, f"choice {j} (column {spec.choice_columns[0 if spec.choices_is_list else j]!r})",
                                at) for j, c in enumerate(listed)]
        if not raw_choices:
            raise TaskError(f"{at}: no choices")
        try:
            context = _FORMATTER.vformat(spec.context, (), row)
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise TaskError(f"{at}: cannot fill context template {spec.context!r}: {e!r}") from None
        gold = _gold_index(_lookup(row, spec.gold_column), spec, raw_choices, at)
        choices = tuple(spec.choice_prefix + c for c in raw_choices)
        out.append(MCExample(id=f"{spec.name}/{raw_id}", context=context, choices=choices, gold=gold))
    return tuple(out)
