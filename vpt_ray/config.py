"""Typed dataclass configs loaded from YAML, validated before any work starts.

Every error names the file and the dotted field path, so a bad spec is refused with a message that points at
the line to fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping that does not match its dataclass."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def named_yaml(name_or_path: str | Path, directory: Path, what: str) -> Path:
    """A ``.yaml``/``.yml`` path as given, or a bare name looked up as ``directory/<name>.yaml``; an unknown
    name is a ConfigError listing the known ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ConfigError(f"{path}: no such {what} (known: {known})")
    return path


def load_config(cls: type[T], path: str | Path) -> T:
    """Load ``path`` (YAML) into dataclass ``cls``; errors name the file and field."""
    return from_dict(cls, load_yaml(path), where=str(path))


def from_dict(cls: type[T], data: Any, where: str = "<config>") -> T:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types recursively."""
    return _convert(cls, data, where, "")


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`from_dict` for dataclasses (tuples become lists, ready for YAML/JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _path(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _fail(where: str, field: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: field '{field or '<root>'}': {msg}")


def _convert(tp: Any, value: Any, where: str, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:  # Optional[X]: X's own error names the field that is wrong
            return _convert(members[0], value, where, field)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, field)
            except ConfigError:
                pass
        raise _fail(where, field, f"{value!r} matches none of {tp}") from None
    if origin is typing.Literal:
        if value not in args:
            raise _fail(where, field, f"{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _fail(where, field, f"expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise _fail(where, _path(field, unknown[0]), f"unknown field (allowed: {sorted(fields)})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], where, _path(field, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(where, _path(field, name), "required field is missing")
        try:
            return tp(**kwargs)
        except (ValueError, TypeError) as e:
            raise _fail(where, field, str(e)) from None
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, field, f"expected a list, got {type(value).__name__}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _fail(where, field, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, where, _path(field, i)) for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, where, _path(field, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(where, field, f"expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, where, _path(field, str(k))): _convert(val_tp, v, where, _path(field, str(k)))
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, field, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, field, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, field, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _fail(where, field, f"expected {tp.__name__}, got {value!r}")
    raise _fail(where, field, f"unsupported config type {tp}")
