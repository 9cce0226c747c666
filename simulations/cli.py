"""The command line, generated from config fields and shared by every entry point.

Every field of an experiment's config is a flag with the field's name in dashes
(``weight_decay`` -> ``--weight-decay``), typed from the field's annotation: ``int``, ``float``,
``str`` (with ``choices`` from the field's metadata), ``bool`` (``--flag`` / ``--no-flag``),
``tuple[float, ...]`` (comma-separated), and ``X | None`` (also ``none``). The same parsing serves
the sweep's ``--set FIELD=V1,V2`` values (:func:`parse_value`).

Bad input on any command line ends as one line on stderr and exit code 2, never a usage dump or
a traceback: :class:`OneLineArgumentParser` does it for argparse errors, and entry points catch
ValueError from config validation and print it with :func:`fail`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse parser whose errors print ``PROG: error: MESSAGE`` (one line) and exit 2."""

    def error(self, message):
        print(f"{self.prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        raise SystemExit(2)


def fail(prog: str, error: BaseException, code: int = 2) -> int:
    """Print ``PROG: error: MESSAGE`` on one line of stderr and return ``code``."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


# ----------------------------------------------------------------------------------------------
# Field types


def field_type(config_class: type, field: str) -> tuple[Any, bool]:
    """(type, optional) of a config field: ``int | None`` -> (int, True)."""
    kind = _type_hints(config_class)[field]
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        optional = len(members) < len(typing.get_args(kind))
        kind = members[0] if len(members) == 1 else str
    return kind, optional


@functools.cache
def _type_hints(config_class: type) -> dict[str, Any]:
    """The resolved annotations of a config class (resolving them costs about a millisecond a call,
    and building every command line asks for each field's)."""
    return typing.get_type_hints(config_class)


def is_vector(config_class: type, field: str) -> bool:
    """True for tuple-valued fields (``pos_cov``), which take comma-separated values."""
    return typing.get_origin(field_type(config_class, field)[0]) is tuple


def _scalar(field: str, text: str, kind, optional: bool):
    text = text.strip()
    if optional and text.lower() == "none":
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        expected = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, kind.__name__)
        raise ValueError(f"{field}: expected {expected}, got {text!r}") from None
    return text


def parse_value(config_class: type, field: str, text: str):
    """Parse one command-line value of ``field`` (a vector field takes ``X1,X2,...``)."""
    kind, optional = field_type(config_class, field)
    if typing.get_origin(kind) is tuple:
        if optional and text.strip().lower() == "none":
            return None
        element = (typing.get_args(kind) or (float,))[0]
        try:
            return tuple(_scalar(field, item, element, False) for item in text.split(","))
        except ValueError:
            raise ValueError(f"{field}: expected comma-separated numbers, got {text!r}") from None
    return _scalar(field, text, kind, optional)


def from_json_value(config_class: type, field: str, value):
    """A field's value read from a JSON record (lists become tuples)."""
    if isinstance(value, list) and is_vector(config_class, field):
        return tuple(value)
    return value


# ----------------------------------------------------------------------------------------------
# Flags from fields


def field_docs(config_class: type) -> dict[str, str]:
    """Per-field text of the config's ``Attributes:`` docstring section (``name: text``)."""
    docs: dict[str, str] = {}
    text = config_class.__doc__ or ""
    if "Attributes:" not in text:
        return docs
    current = None
    for line in text.split("Attributes:", 1)[1].splitlines():
        match = re.match(r"^\s{4,8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if match:
            names = [name.strip() for name in match.group(1).split(",")]
            current = names
            for name in names:
                docs[name] = match.group(2).strip()
        elif current and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
        elif not line.strip() and current:
            current = None
    return docs


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _argument_type(config_class: type, field: str):
    def convert(text: str):
        try:
            return parse_value(config_class, field, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 1)[-1]) from None
    convert.__name__ = field  # argparse names the type in "invalid <name> value"
    return convert


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, *, hidden=(), required=(),
                     help: dict[str, str] | None = None) -> None:
    """One flag per config field (``default=SUPPRESS``: only the flags given reach the namespace)."""
    docs = {**field_docs(config_class), **(help or {})}
    for field in dataclasses.fields(config_class):
        if field.name in hidden:
            continue
        kind, optional = field_type(config_class, field.name)
        default = field.default if field.default is not dataclasses.MISSING else None
        text = docs.get(field.name, field.name.replace("_", " "))
        if field.name in required:
            text += " (required)"
        elif "(default" not in text and "default" not in text.lower():
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text += f" (default {shown})"
        text = text.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": text}
        choices = field.metadata.get("choices")
        if kind is bool and not optional:
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if choices:
            kwargs["choices"] = tuple(choices)
        else:
            kwargs["type"] = _argument_type(config_class, field.name)
            kwargs["metavar"] = "X1,X2,..." if is_vector(config_class, field.name) else field.name.upper()
        parser.add_argument(flag(field.name), **kwargs)


def add_run_flags(parser: argparse.ArgumentParser, *, name: str) -> None:
    """The flags every experiment command shares besides its config fields."""
    parser.add_argument("--quick", action="store_true", help="start from the experiment's quick (seconds-long) config")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from a saved JSON record (its 'config' entry, or a plain object of fields); "
                             "flags given on the command line override it")
    parser.add_argument("--out", default=f"results/{name}",
                        help="where to save results without --json (default %(default)s; an existing different "
                             "run is never overwritten: a numbered name is chosen and printed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object and save nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress messages on stderr")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The config fields in a JSON file: a saved record's ``config`` entry, or the object itself."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config: {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--config: {path} is not a readable JSON file ({error})") from None
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        record = record["config"]
    if not isinstance(record, dict):
        raise ValueError(f"--config: {path} must hold a JSON object of config fields")
    return record


def config_fields(parser: argparse.ArgumentParser, args: argparse.Namespace, config_class: type, *,
                  required=(), hidden=()) -> dict[str, Any]:
    """The config fields a command line sets: ``--config FILE`` first, then the flags given.

    Raises (through ``parser.error``, exit 2): a required field set by neither, or a field in the
    file that the config does not have.
    """
    names = [field.name for field in dataclasses.fields(config_class)]
    fields: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            record = read_config_file(args.config)
        except ValueError as error:
            parser.error(str(error))
        unknown = sorted(set(record) - set(names))
        if unknown:
            parser.error(f"--config: fields {unknown} are not fields of {config_class.__name__}")
        fields.update({key: from_json_value(config_class, key, value) for key, value in record.items()
                       if key not in hidden})
    fields.update({name: getattr(args, name) for name in names if hasattr(args, name) and name not in hidden})
    missing = [flag(name) for name in required if name not in fields]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return fields
