"""Where settings come from: dataclass defaults -> a YAML file -> command-line overrides.

Precedence is fixed: the defaults in :mod:`polar_rl.config`, then a YAML file (only the values that
differ), then overrides such as ``--env.compute_penalty 0.05`` or ``--seed=3``. The merged whole is
checked once, so a file that only the command line makes consistent loads. Configs are data: YAML
is read with a ``SafeLoader`` (no Python tags, nothing evaluated); override values are YAML scalars
or flow collections, and string fields keep the text as typed.
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
    is_optional,
    is_section,
    is_text,
    leaf_fields,
    strip_optional,
    type_name,
)
from polar_rl.fileio import write_text_atomic

__all__ = ["add_config_arguments", "config_help", "load_config", "overrides_from_args", "save_config"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` and ``1.0e5`` as floats (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            with suppress(TypeError):  # unhashable keys are reported by the base class
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML (YAML 1.1) needs a dot and a signed exponent for a float; add the YAML 1.2 forms.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _yaml_error(e: yaml.YAMLError, where: str) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f"{where}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else where
    return f"{at}: invalid YAML: {getattr(e, 'problem', None) or e}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"config path is not a file: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(e, str(path))) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, env:, ...), "
                          f"got a {type(data).__name__}")
    return data or {}


# ----------------------------------------------------------------------------------------------
# Overrides: --section.key VALUE / --section.key=VALUE
# ----------------------------------------------------------------------------------------------


def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, got the string {overrides!r}")
    tokens, pairs, i = list(overrides), [], 0
    while i < len(tokens):
        token = tokens[i]
        if not isinstance(token, str) or not token.startswith("--") or token == "--":
            raise ConfigError(f"override {token!r}: expected --section.key VALUE or --section.key=VALUE")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(tokens) or (isinstance(tokens[i + 1], str) and tokens[i + 1].startswith("--")):
                raise ConfigError(f"override --{key} has no value (write --{key} VALUE or --{key}=VALUE)")
            value = tokens[i + 1]
            if not isinstance(value, str):
                raise ConfigError(f"override --{key}: value {value!r} is not a string")
            i += 2
        if not key:
            raise ConfigError(f"override {token!r} has no key")
        pairs.append((key, value))
    return pairs


def _resolve_key(key: str) -> tuple[list[str], Any]:
    """Split a dotted override key into its path and the type at its end (Any inside a mapping)."""
    parts = [p.replace("-", "_") for p in key.split(".")]
    if any(not p for p in parts):
        raise ConfigError(f"override --{key}: empty part in the key")
    cls: Any = Config
    for depth, part in enumerate(parts):
        f, dotted, rest = cls.model_fields.get(part), ".".join(parts[: depth + 1]), parts[depth + 1 :]
        if f is None:  # unknown: the check of the merged config names it, with a did-you-mean hint
            return parts, Any
        if is_section(f.annotation):
            if not rest:
                names = ", ".join(f"--{dotted}.{name}" for name in f.annotation.model_fields)
                raise ConfigError(f"override --{key}: {dotted!r} is a section; set its keys: {names}")
            cls = f.annotation
            continue
        if rest:
            inner = strip_optional(f.annotation)
            if not (inner is dict or get_origin(inner) is dict):
                raise ConfigError(f"override --{key}: {dotted!r} is a {type_name(f.annotation)}, it has no keys")
            return parts, Any
        return parts, f.annotation
    raise AssertionError("unreachable")  # pragma: no cover


def _parse_value(key: str, raw: str, tp: Any) -> Any:
    if is_text(tp):  # strings stay as typed: --run_name 2024 is the name "2024"
        return None if is_optional(tp) and raw in ("null", "Null", "NULL", "~") else raw
    try:
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"override --{key} {raw!r}: not a YAML value: {getattr(e, 'problem', None) or e}") from None


def _apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping, got {child!r}")
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
    data = _read_yaml(Path(path)) if path is not None else {}
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
