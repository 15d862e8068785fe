"""Strict validation of plain mappings (parsed YAML) into frozen dataclasses.

Unknown keys name the closest valid key; wrong types say expected versus got;
field constraints live in each dataclass's ``check()`` method, which returns an
error message or None.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

from .errors import PresetError

__all__ = ["closest", "from_mapping", "to_mapping"]

T = TypeVar("T")


def closest(word: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, None
    if origin is Literal:
        return (value in typing.get_args(tp) and not isinstance(value, bool)), value
    if tp is type(None):
        return value is None, None
    if tp is object:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported field type {tp!r}")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; PresetError naming ``where.key`` on any problem."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PresetError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise PresetError(f"{where}: unknown key {key!r}{closest(key, fields)}; valid keys: {', '.join(sorted(fields))}")
        ok, coerced = _coerce(value, hints[key])
        if not ok:
            raise PresetError(f"{where}.{key}: expected {_describe(hints[key])}, got {value!r}")
        kwargs[key] = coerced
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    problem = check() if check else None
    if problem:
        raise PresetError(f"{where}: {problem}")
    return obj


def to_mapping(obj: Any) -> dict:
    """Dataclass -> plain dict (for `presets show`)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
