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

import json
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from polar_rl.config import clip, shorten
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
    raise TaskError(f"path {shorten(str(raw))} not found (tried {', '.join(str(c) for c in candidates)})")


def _require(spec: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in spec or spec[key] is None:
        raise TaskError(f"{where}: missing required key {shorten(key)}")
    return spec[key]


def _parse_source(src: Any, where: str, base_dir: Path | None) -> tuple[str, str, str | None, str | None]:
    if isinstance(src, str):  # shorthand: `source: data/my.jsonl`
        src = {"path": src}
    if not isinstance(src, Mapping):
        raise TaskError(f"{where}: 'source' must be a mapping like {{path: file.jsonl}}, got {shorten(src)}")
    kinds = [k for k in SOURCE_KINDS if k in src]
    extra = set(src) - set(SOURCE_KINDS) - {"config", "split"}
    if len(kinds) != 1 or extra:
        raise TaskError(
            f"{where}: unknown source kind {shorten(sorted(map(str, set(src) - {'config', 'split'})))}; "
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
        f"{where}: 'choices' must be {{column: <list column>}} or {{columns: [a, b, ...]}}, got {shorten(ch)}"
    )


def _parse_gold(gold: Any, where: str) -> tuple[str, str, int]:
    if isinstance(gold, str):
        gold = {"column": gold}
    if not isinstance(gold, Mapping) or not isinstance(gold.get("column"), str):
        raise TaskError(f"{where}: 'gold' must be like {{column: label, type: index}}, got {shorten(gold)}")
    extra = set(gold) - {"column", "type", "offset"}
    if extra:
        raise TaskError(f"{where}: unknown gold keys {shorten(sorted(map(str, extra)))} "
                        f"(allowed: column, type, offset)")
    kind = gold.get("type", "index")
    if kind not in GOLD_TYPES:
        raise TaskError(f"{where}: unknown gold type {shorten(kind)}; choose from {list(GOLD_TYPES)}")
    offset = gold.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TaskError(f"{where}: gold offset must be an integer, got {shorten(offset)}")
    if offset and kind != "index":
        raise TaskError(f"{where}: gold offset only applies to type 'index', not {shorten(kind)}")
    return gold["column"], kind, offset


def parse_spec(
    spec: Mapping[str, Any], *, base_dir: Path | None = None, default_name: str | None = None
) -> MCSpec:
    """Validate a spec mapping's structure (keys, kinds, template syntax, ratios)."""
    if not isinstance(spec, Mapping):
        raise TaskError(f"a task spec must be a mapping, got {type(spec).__name__}")
    name = spec.get("name") or default_name
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"task spec needs a non-empty string 'name', got {shorten(spec.get('name'))}")
    where = f"task spec {shorten(name)}"
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise TaskError(f"{where}: unknown keys {shorten(sorted(map(str, unknown)))}; allowed: {sorted(SPEC_KEYS)}")
    context = _require(spec, "context", where)
    if not isinstance(context, str):
        raise TaskError(f"{where}: 'context' must be a string template, got {shorten(context)}")
    _template_fields(context, where)  # syntax check now, columns later
    cols, is_list = _parse_choices(_require(spec, "choices", where), where)
    gold_col, gold_type, offset = _parse_gold(_require(spec, "gold", where), where)
    prefix = spec.get("choice_prefix", " ")
    if not isinstance(prefix, str):
        raise TaskError(f"{where}: 'choice_prefix' must be a string, got {shorten(prefix)}")
    id_col = spec.get("id_column")
    if id_col is not None and not isinstance(id_col, str):
        raise TaskError(f"{where}: 'id_column' must be a column name, got {shorten(id_col)}")
    ratios = spec.get("splits") or DEFAULT_RATIOS
    if not isinstance(ratios, Mapping):
        raise TaskError(f"{where}: 'splits' must map split names to ratios, got {shorten(ratios)}")
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
        raise TaskError(f"cannot read {path}: unknown extension {shorten(ext)}; supported: {sorted(_BUILDERS)}")
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
    except Exception as e:  # malformed file, missing hub set, ...: say which source failed, and why
        problem = diagnose_file(Path(location)) if kind == "path" else None
        what = "data file" if kind == "path" else f"{kind} source"
        raise TaskError(f"cannot read {what} {location}: {problem or _library_error(e)}") from e


def _library_error(e: BaseException) -> str:
    """A library's exception as one bounded line; ``datasets`` wraps the real error as the cause."""
    cause = e.__cause__ if type(e).__name__ == "DatasetGenerationError" and e.__cause__ is not None else e
    return f"{type(cause).__name__}: {clip(str(cause).strip() or 'no message', 200)}"


_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
_DIAGNOSE_BYTES = 256 << 20  # larger files are left to the library's message


def _file_bytes(path: Path) -> bytes | None:
    """The file's bytes, decompressed (gz, bz2, xz); None for other compressions or huge files."""
    if path.stat().st_size > _DIAGNOSE_BYTES:
        return None
    suffix = path.suffix.lower()
    if suffix in _OPENERS:
        import importlib

        return importlib.import_module(_OPENERS[suffix]).decompress(path.read_bytes())
    return None if suffix in _COMPRESSION else path.read_bytes()


def diagnose_file(path: Path) -> str | None:
    """Why a local data file yields no rows, as one line naming the line at fault: empty, only blank
    lines, not UTF-8, a CSV header without rows, or the first JSON line that does not parse (None when
    none of these is the reason)."""
    try:
        raw = _file_bytes(path)
    except (OSError, EOFError, ValueError) as e:
        return f"cannot decompress it ({_library_error(e)})"
    if raw is None:
        return None
    if not raw:
        return "the file is empty (0 bytes)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return f"line {line}: not UTF-8 text (byte {raw[e.start]:#04x})"
    lines = text.splitlines()
    rows = [line for line in lines if line.strip()]
    if not rows:
        return f"the file holds only blank lines ({len(lines)} lines, no rows)"
    builder = _builder_for(path)[0]
    if builder == "csv":
        return "the file has a header line but no data rows" if len(rows) == 1 else None
    return _json_problem(text, lines) if builder == "json" else None


def _json_problem(text: str, lines: list[str]) -> str | None:
    """The first problem of a JSON file: a list of objects (one document) or one object per line."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            json.loads(next(line for line in lines if line.strip()))
        except json.JSONDecodeError:  # not JSON lines: one document, broken where the error says
            return f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})"
        return _json_lines_problem(lines)
    items = doc if isinstance(doc, list) else [doc]
    bad = next((i for i, item in enumerate(items) if not isinstance(item, dict)), None)
    return None if bad is None else f"item {bad} is a {type(items[bad]).__name__}, not an object {{...}}"


def _json_lines_problem(lines: list[str]) -> str | None:
    """The first line of a JSON-lines file that is not one JSON object."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {n}, column {e.colno}: not valid JSON ({e.msg}): {shorten(line, 60)}"
        if not isinstance(row, dict):
            return f"line {n}: a row must be a JSON object {{...}}, got a {type(row).__name__}: {shorten(line, 60)}"
    return None


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' own error log lines: a failed load becomes one TaskError that says why."""
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)


def _load_rows(kind: str, location: str, config: str | None, split: str | None) -> tuple[dict[str, Any], ...]:
    import datasets

    datasets.disable_progress_bars()
    with _quiet_datasets():
        return _load_dataset(kind, location, config, split)


def _load_dataset(kind: str, location: str, config: str | None, split: str | None) -> tuple[dict[str, Any], ...]:
    import datasets

    if kind == "hub":  # the only kind allowed to use the network
        ds = datasets.load_dataset(location, config, split=split)
    elif kind == "disk":
        with offline():
            ds = datasets.load_from_disk(location)
        if isinstance(ds, datasets.DatasetDict):
            if split is None or split not in ds:
                raise TaskError(
                    f"{location} holds splits {sorted(ds)}; pick one with source.split (got {shorten(split)})"
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
        raise TaskError(f"{where}: bad context template {shorten(template)}: {e}") from None
    for f in fields:
        if f == "" or f.isdigit():
            raise TaskError(f"{where}: context template field {{{f}}} must name a column")
    return fields


def _check_column(rows: Sequence[Mapping[str, Any]], path: str, role: str, where: str) -> None:
    if _lookup(rows[0], path) is _MISSING:
        raise TaskError(f"{where}: {role} column {shorten(path)} not found; available columns: "
                        f"{shorten(sorted(rows[0]), 300)}")


def _as_text(value: Any, what: str, where: str, allow_int: bool = False) -> str:
    """``value`` when it is a string (or, with ``allow_int``, an int: ids); anything else is an error
    naming it, never converted (a float choice 0.10 would silently become "0.1")."""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TaskError(f"{where}: {what} must be text{' or an int' if allow_int else ''}, got {shorten(value)} "
                    f"({type(value).__name__})")


def _gold_index(value: Any, spec: MCSpec, raw_choices: Sequence[str], where: str) -> int:
    n = len(raw_choices)
    idx: int | None = None
    if spec.gold_type in ("text", "letter") and not isinstance(value, str):
        raise TaskError(f"{where}: gold of type {spec.gold_type} must be text, got {shorten(value)} "
                        f"({type(value).__name__})")
    if spec.gold_type == "index" and not (isinstance(value, int) and not isinstance(value, bool)
                                          or isinstance(value, str)):
        raise TaskError(f"{where}: gold of type index must be an int, got {shorten(value)} ({type(value).__name__})")
    if spec.gold_type == "text":
        text = value
        if text in raw_choices:
            idx = raw_choices.index(text)
        elif text is not None and text.strip() in [c.strip() for c in raw_choices]:
            idx = [c.strip() for c in raw_choices].index(text.strip())
        if idx is None:
            raise TaskError(f"{where}: gold {shorten(value)} is not among the choices {shorten(list(raw_choices))}")
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
            f"{where}: gold {shorten(value)} (type {spec.gold_type}) is not among the {n} choices "
            f"{shorten(list(raw_choices))}"
        )
    return idx


def build_examples(spec: MCSpec, rows: Sequence[Mapping[str, Any]]) -> tuple[MCExample, ...]:
    """Turn rows into examples, checking columns, templates, choices, gold and id uniqueness."""
    where = f"task spec {shorten(spec.name)}"
    if not rows:
        raise TaskError(f"{where}: source {shorten(spec.source[1])} has no rows (empty set)")
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
            else _as_text(_lookup(row, spec.id_column), f"id column {shorten(spec.id_column)}", f"{where}, row {i}",
                          allow_int=True)
        )
        at = f"{where}, row {i} (id {shorten(raw_id)})"
        if raw_id in seen:
            raise TaskError(f"{at}: duplicate id, first seen at row {seen[raw_id]}")
        seen[raw_id] = i
        if spec.choices_is_list:
            listed = _lookup(row, spec.choice_columns[0])
            if not isinstance(listed, list | tuple):
                raise TaskError(
                    f"{at}: choices column {shorten(spec.choice_columns[0])} must hold a list, got {shorten(listed)}"
                )
        else:
            listed = [_lookup(row, c) for c in spec.choice_columns]
        columns = [spec.choice_columns[0 if spec.choices_is_list else j] for j in range(len(listed))]
        raw_choices = [_as_text(c, f"choice {j} (column {shorten(col)})", at)
                       for j, (c, col) in enumerate(zip(listed, columns, strict=True))]
        if not raw_choices:
            raise TaskError(f"{at}: no choices")
        try:
            context = _FORMATTER.vformat(spec.context, (), row)
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise TaskError(f"{at}: cannot fill context template {shorten(spec.context)}: {shorten(e)}") from None
        gold = _gold_index(_lookup(row, spec.gold_column), spec, raw_choices, at)
        choices = tuple(spec.choice_prefix + c for c in raw_choices)
        try:
            out.append(MCExample(id=f"{spec.name}/{raw_id}", context=context, choices=choices, gold=gold))
        except TaskError as e:  # empty or duplicate choices, empty context: say which row
            raise TaskError(f"{where}, row {i}: {e}") from None
    return tuple(out)
