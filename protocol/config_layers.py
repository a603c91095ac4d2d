"""Typed configs built in layers: a frozen dataclass of sections, overlaid by dicts, TOML and overrides.

A config here is a frozen dataclass whose fields are either sections (frozen dataclasses, one
TOML table each) or top-level values. A *layer* is a mapping in the TOML file's shape,
``{"seed": 3, "loop": {"hz": 50.0}}``:

* :func:`checked_layer` checks one layer's keys and coerces its values to the fields' types
  (:func:`coerce`), so a file's mistakes are found, and named, on their own;
* :func:`override_layer` turns ``section.field=VALUE`` strings (the command line's ``--set``)
  into a layer;
* :func:`merge_layers` stacks layers, a later one winning key by key, so a config is validated
  once, on its final values;
* :func:`overlay` returns a config with a layer applied, every section validated by its own
  ``__post_init__``; :func:`to_layer` and :func:`toml_text` write one back.

Unknown keys and bad values raise ValueError naming the key (``loop.hz``); a section's own
ValueError subclass is kept.

The runtime's config (``runtime.config``) is built this way; the learner's (``learner.config``)
reads its files and ``--set`` overrides with :func:`load_toml` and :func:`override_layer` and
coerces values with helpers of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

C = TypeVar("C")

__all__ = ["checked_layer", "coerce", "load_toml", "merge_layers", "overlay", "override_layer", "parse_value",
           "to_layer", "toml_text"]


def load_toml(path: str | Path) -> dict[str, Any]:
    """Returns the TOML file at ``path`` as a dict. Raises ValueError on invalid TOML (naming the
    file), OSError when it cannot be read. Blocks on the disk."""
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from e


def parse_value(raw: str) -> Any:
    """Returns ``raw`` read as a TOML value (``1e-4``, ``true``, ``["wrist"]``, ``"x"``); a bare
    word that is no TOML value (``fifo``, ``tcp://host:5555``, ``/data/spill``) is the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def override_layer(overrides: Sequence[str], config: Any) -> dict[str, Any]:
    """Returns the layer of ``KEY=VALUE`` overrides: ``section.field`` for a section's field, a
    bare name for a top-level field of ``config``; values as :func:`parse_value` reads them.
    Raises ValueError naming a malformed or unknown key (values are checked by :func:`overlay`)."""
    layer: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        value = parse_value(raw.strip())
        parts = key.split(".")
        if len(parts) == 1 and _is_field(config, key) and not _is_section(config, key):
            layer[key] = value
        elif len(parts) == 2 and _is_section(config, parts[0]):
            layer.setdefault(parts[0], {})[parts[1]] = value  # the field is checked by overlay
        else:
            raise ValueError(f"unknown config key {key!r}")
    return layer


def checked_layer(config: Any, layer: Mapping[str, Any]) -> dict[str, Any]:
    """Returns ``layer`` with each value coerced to its field's type (:func:`coerce`), without
    building anything: a layer's own mistakes found before it meets the others (a value that only
    conflicts with another field is :func:`overlay`'s to find). Raises ValueError naming an unknown
    key or a value of the wrong type."""
    if not isinstance(layer, Mapping):
        raise ValueError(f"a config layer must be a table, got {type(layer).__name__}")
    unknown = sorted(k for k in layer if not _is_field(config, k))
    if unknown:
        raise ValueError(f"unknown config key(s): {unknown}")
    hints = typing.get_type_hints(type(config))
    out: dict[str, Any] = {}
    for name, value in layer.items():
        if not _is_section(config, name):
            out[name] = coerce(name, hints[name], value)
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"config section [{name}] must be a table, got {type(value).__name__}")
        section = getattr(config, name)
        fields = {f.name for f in dataclasses.fields(section)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"unknown config key(s) in [{name}]: {[f'{name}.{k}' for k in unknown]}")
        section_hints = typing.get_type_hints(type(section))
        out[name] = {k: coerce(f"{name}.{k}", section_hints[k], v) for k, v in value.items()}
    return out


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Returns one layer holding every key of ``layers``, a later layer's value winning (tables
    are merged key by key, other values replaced whole)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], **value}
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def overlay(config: C, layer: Mapping[str, Any]) -> C:
    """Returns ``config`` with ``layer`` applied; tables may be partial. Raises ValueError naming
    an unknown key (``unknown config key(s) in [loop]: ['loop.hzz']``) or a bad value
    (``loop.hz: must be in (0, 1000], got 0.0``); a section's own ValueError subclass is kept."""
    changes: dict[str, Any] = {}
    for name, value in checked_layer(config, layer).items():
        changes[name] = _replace_section(name, getattr(config, name), value) if _is_section(config, name) else value
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def to_layer(config: Any) -> dict[str, Any]:
    """Returns ``config`` as a layer of TOML/JSON-ready builtins: tuples as lists, paths as
    strings, None kept (``overlay(default, to_layer(c)) == c``)."""
    return _plain(dataclasses.asdict(config))


def toml_text(layer: Mapping[str, Any]) -> str:
    """Returns ``layer`` written as TOML: top-level values, then one table per section. None,
    which TOML cannot hold, is written ``"none"`` (read back as None by :func:`coerce`)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in layer.items() if not isinstance(v, Mapping)]
    tables = [f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
              for name, table in layer.items() if isinstance(table, Mapping)]
    return "\n".join(["\n".join(top) + "\n" if top else "", *tables]).lstrip("\n")


def coerce(key: str, hint: Any, value: Any) -> Any:
    """Returns ``value`` (as TOML or an override gave it) converted to the field type ``hint``:
    lists to tuples, ints to floats, strings to paths, ``"none"`` to None for an optional field.
    Raises ValueError naming ``key`` when the value has the wrong type."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    target = inner[0] if len(inner) == 1 else hint
    if typing.get_origin(target) is tuple or target is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: must be a list, got {value!r}")
        item = typing.get_args(target)[0] if typing.get_args(target) else None
        if item in (str, int, float, bool):
            return tuple(coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value))
        return tuple(value)
    if target is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ValueError(f"{key}: must be a path, got {value!r}")
        return Path(value)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if target in (int, float, bool, str) and (not isinstance(value, target) or
                                              (target is not bool and isinstance(value, bool))):
        raise ValueError(f"{key}: must be {target.__name__}{' or none' if optional else ''}, got {value!r}")
    return value


# ---------------------------------------------------------------------- helpers
def _is_field(config: Any, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(config)}


def _is_section(config: Any, name: str) -> bool:
    return _is_field(config, name) and dataclasses.is_dataclass(getattr(config, name))


def _replace_section(name: str, current: Any, changes: Mapping[str, Any]) -> Any:
    """Returns the section ``current`` with ``changes`` (checked and coerced) applied."""
    fields = {f.name for f in dataclasses.fields(current)}
    try:
        return dataclasses.replace(current, **changes)
    except ValueError as e:
        # the sections' messages start with the field ("hz: must be ..."): name the key in full
        field = str(e).partition(":")[0]
        raise _same_kind(e, f"{name}.{e}" if field in fields else f"[{name}]: {e}") from e
    except TypeError as e:  # a field the constructor refuses outright
        raise ValueError(f"[{name}]: {e}") from e


def _same_kind(error: ValueError, message: str) -> ValueError:
    """Returns ``error``'s class with ``message``, so a caller catching a subclass still can."""
    try:
        return type(error)(message)
    except TypeError:  # a subclass with another constructor
        return ValueError(message)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
