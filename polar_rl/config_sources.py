"""Where settings come from: dataclass defaults -> a YAML file -> command-line overrides.

Precedence is fixed: the defaults in :mod:`polar_rl.config`, then a YAML file (only the values that
differ), then overrides such as ``--env.compute_penalty 0.05`` or ``--seed=3``. The merged whole is
checked once, so a file that only the command line makes consistent loads. Configs are data: YAML
is read with a ``SafeLoader`` (no Python tags, nothing evaluated); override values are YAML scalars
or flow collections, and string fields keep the text as typed. :func:`read_yaml` is the one reader
of every YAML file a user writes (config, task spec, sweep).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, get_origin

import yaml

from polar_rl.config import (
    Config,
    ConfigError,
    clip,
    is_optional,
    is_section,
    is_text,
    leaf_fields,
    shorten,
    strip_optional,
    type_name,
)
from polar_rl.fileio import write_text_atomic

__all__ = [
    "add_config_arguments", "config_help", "load_config", "overrides_from_args", "read_yaml", "save_config",
]


#: nodes that aliases may add to a document once expanded (a config has a few hundred in all); past
#: this it is refused: a 549-byte "billion laughs" file expands to ~10^9 nodes that every walk repeats
MAX_ALIAS_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` and ``1.0e5`` as floats (YAML 1.2), rejects duplicate keys and
    refuses documents whose aliases expand past :data:`MAX_ALIAS_NODES` extra nodes (or without end)."""

    def construct_document(self, node: yaml.Node) -> Any:
        extra = _alias_expansion(node, MAX_ALIAS_NODES)
        if extra > MAX_ALIAS_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand the document by more than {MAX_ALIAS_NODES:,} nodes (or recursively); "
                f"write the values out", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            with suppress(TypeError):  # unhashable keys are reported by the base class
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"found duplicate key {shorten(key)}",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML (YAML 1.1) needs a dot and a signed exponent for a float; add the YAML 1.2 forms.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _alias_expansion(root: yaml.Node, limit: int) -> int:
    """Nodes that aliases add to the document under ``root`` once expanded (an alias repeats its
    anchor's whole subtree); ``limit + 1`` once past ``limit`` or for a recursive alias. Iterative
    and linear in the distinct nodes (the counts are exact ints), so a bomb costs nothing to measure."""
    size: dict[int, int] = {}  # node id -> nodes of its subtree with every alias expanded
    open_: set[int] = set()  # nodes whose subtree is being measured (a recursive alias meets one)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size:
            continue
        if key in open_:
            return limit + 1
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))
    return min(limit + 1, size[id(root)] - len(size))


def _yaml_error(e: yaml.YAMLError, where: str) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f"{where}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else where
    return f"{at}: invalid YAML: {clip(getattr(e, 'problem', None) or e)}"


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """The data of the YAML file at ``path``, as every file a user writes is read (config, task spec,
    sweep): safe (no Python tags), YAML 1.2 floats, duplicate keys and alias bombs refused. Any
    failure is one ConfigError naming the file (``what`` says which kind), and the line where known."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}" if not path.exists() else f"{what} is not a file: {path}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {clip(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(e, str(path))) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as e:  # a scalar Python refuses to build (an int of more than 4,300 digits)
        raise ConfigError(f"{path}: invalid YAML: {clip(e)}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "config file")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, env:, ...), "
                          f"got a {type(data).__name__}")
    return data or {}


# ----------------------------------------------------------------------------------------------
# Overrides: --section.key VALUE / --section.key=VALUE
# ----------------------------------------------------------------------------------------------


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, got the string {shorten(overrides)}")
    tokens, pairs, i = list(overrides), [], 0
    while i < len(tokens):
        token = tokens[i]
        if not isinstance(token, str) or not token.startswith("--") or token == "--":
            raise ConfigError(f"override {shorten(token)}: expected --section.key VALUE or --section.key=VALUE")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or (isinstance(tokens[i + 1], str) and tokens[i + 1].startswith("--")):
                raise ConfigError(f"override --{clip(key, 80)} has no value (write --{clip(key, 80)} VALUE or "
                                  f"--{clip(key, 80)}=VALUE)")
            value = tokens[i + 1]
            if not isinstance(value, str):
                raise ConfigError(f"override --{clip(key, 80)}: value {shorten(value)} is not a string")
            i += 2
        if not key:
            raise ConfigError(f"override {shorten(token)} has no key")
        pairs.append((key, value))
    return pairs


def _resolve_key(key: str) -> tuple[list[str], Any]:
    """Split a dotted override key into its path and the type at its end (Any inside a mapping)."""
    parts = [p.replace("-", "_") for p in key.split(".")]
    if any(not p for p in parts):
        raise ConfigError(f"override --{clip(key, 80)}: empty part in the key")
    cls: Any = Config
    for depth, part in enumerate(parts):
        f, dotted, rest = cls.model_fields.get(part), ".".join(parts[: depth + 1]), parts[depth + 1 :]
        if f is None:  # unknown: the check of the merged config names it, with a did-you-mean hint
            return parts, Any
        if is_section(f.annotation):
            if not rest:
                names = ", ".join(f"--{dotted}.{name}" for name in f.annotation.model_fields)
                raise ConfigError(f"override --{key}: {shorten(dotted)} is a section; set its keys: {names}")
            cls = f.annotation
            continue
        if rest:
            inner = strip_optional(f.annotation)
            if not (inner is dict or get_origin(inner) is dict):
                raise ConfigError(f"override --{clip(key, 80)}: {shorten(dotted)} is a {type_name(f.annotation)}, "
                                  f"it has no keys")
            return parts, Any
        return parts, f.annotation
    raise AssertionError("unreachable")  # pragma: no cover


def _parse_value(key: str, raw: str, tp: Any) -> Any:
    if is_text(tp):  # strings stay as typed: --run_name 2024 is the name "2024"
        return None if is_optional(tp) and raw in ("null", "Null", "NULL", "~") else raw
    try:
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        why = clip(getattr(e, "problem", None) or e or "nested too deeply")
        raise ConfigError(f"override --{clip(key, 80)} {shorten(raw)}: not a YAML value: {why}") from None


def _apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping, got {shorten(child)}")
        node[part] = child = dict(child)  # a copy: the file's own mapping stays as read
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; checked as a whole.

    ``overrides`` are command-line style: ``["--env.compute_penalty", "0.05", "--seed=3"]``. Values
    are parsed as YAML (numbers, ``[128, 128]``, ``true``, ``null``); string fields take the text as
    written. ``--agent.kwargs.clip_range 0.1`` sets one key of a mapping field. An error names the
    override or the file the bad key came from.
    """
    data = _read_config_file(Path(path)) if path is not None else {}
    overridden: set[str] = set()
    for key, raw in _parse_overrides(overrides):
        parts, tp = _resolve_key(key)
        _apply_override(data, parts, _parse_value(key, raw, tp))
        overridden.add(".".join(parts))
    try:
        return Config.from_dict(data)
    except ConfigError as e:
        bad = e.key  # the message names it; say which file it came from unless an override set it
        from_file = bad is not None and not any(bad == k or bad.startswith((f"{k}.", f"{k}[")) for k in overridden)
        if from_file and path is not None:
            raise ConfigError(f"{path}: {e}", bad) from None
        raise


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg.to_yaml()`` to ``path`` atomically (temp file in the same directory + os.replace)."""
    return write_text_atomic(path, cfg.to_yaml())


# ----------------------------------------------------------------------------------------------
# Command line: one option per setting, with its help text and default
# ----------------------------------------------------------------------------------------------


def _format_default(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def add_config_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Add ``--section.field VALUE`` for every setting, grouped by section, with help and default.

    Nothing is stored unless given (``default=argparse.SUPPRESS``), and values stay raw strings:
    pass ``overrides_from_args(args)`` to :func:`load_config` so they are parsed and checked like
    any override and precedence stays defaults -> YAML -> command line. Returns the dotted keys.
    """
    groups: dict[str, Any] = {}
    keys = []
    for key, tp, f in leaf_fields():
        section = key.split(".")[0] if "." in key else ""
        if section not in groups:
            doc = (Config.model_fields[section].annotation.__doc__ or "").strip() if section else ""
            title = f"{section} settings" if section else "top-level settings"
            groups[section] = parser.add_argument_group(title, doc.splitlines()[0] if doc else None)
        help_text = f"{f.description} (default: {_format_default(f.get_default(call_default_factory=True))})"
        groups[section].add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS,
                                     metavar=type_name(tp).replace(" | None", "|null").upper(),
                                     help=help_text.replace("%", "%%"))
        keys.append(key)
    return keys


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``--key value`` overrides that ``add_config_arguments`` options produced, for load_config."""
    return [token for key, _, _ in leaf_fields() if hasattr(args, key) for token in (f"--{key}", getattr(args, key))]


def config_help() -> str:
    """One line per setting: ``--key TYPE  help (default: ...)``, grouped by section."""
    lines: list[str] = []
    current = None
    for key, tp, f in leaf_fields():
        section = key.split(".")[0] if "." in key else ""
        if section != current:
            current = section
            lines.append(f"{section}:" if section else "top level:")
        default = _format_default(f.get_default(call_default_factory=True))
        lines.append(f"  --{key} {type_name(tp)}  {f.description} (default: {default})")
    return "\n".join(lines)
