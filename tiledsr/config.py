"""Strict validation of plain mappings (parsed YAML) into frozen dataclasses.

Unknown keys name the closest valid key; wrong types say expected versus got;
field constraints live in each dataclass's ``check()`` method, which returns an
error message or None. Before ``check()`` runs, every value is bounded here:
numbers must be finite and within :data:`MAX_VALUES` (or :data:`MAX_INT`),
strings may hold no control characters. Messages quote user values through
:func:`short`, so they stay one short line whatever the value.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

from .errors import PresetError
from .text import cut, short

__all__ = ["MAX_INT", "MAX_VALUES", "closest", "from_mapping", "to_mapping"]

T = TypeVar("T")

MAX_INT = 2**64 - 1  # no setting needs more (torch seeds go up to here)
MAX_VALUES: dict[str, float] = {  # largest sensible value of any field with this name
    "tile": 65536, "overlap": 65535, "batch": 1024, "steps": 1000, "width": 1 << 20, "height": 1 << 20,
    "context": 65536, "noise_level": 1000, "guidance": 100.0, "seed": MAX_INT,
}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # control characters but tab and newline
NAME_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # in names, tab and newline too
NAME_FIELDS = {"name", "model", "device"}


def closest(word: Any, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    if not isinstance(word, str) or not word or len(word) > 200:
        return ""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {short(match[0])}?)" if match else ""


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
        return any(type(value) is type(a) and value == a for a in typing.get_args(tp)), value
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
        if ok and isinstance(value, int) and abs(value) > MAX_INT:
            return True, value  # left an int, refused by _bound (float() could overflow)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported field type {tp!r}")


def _bound(key: str, value: Any) -> str | None:
    """What is wrong with a coerced field value (range, finiteness, control characters), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        limit = MAX_VALUES.get(key, MAX_INT)
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number, got {short(value)}"
        if value > limit:
            return f"{short(value)} is too large; use at most {limit}"
        if value < -limit:
            return f"{short(value)} is too small; use at least -{limit}"
    if isinstance(value, str):
        found = (NAME_CONTROL if key in NAME_FIELDS else CONTROL).search(value)
        if found:
            return f"control character {found.group()!r} in {short(value)}; remove it"
    return None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """{field name: type} of the fields a mapping may set."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _field(cls: type, key: Any, value: Any, where: str) -> Any:
    """The checked value of field ``key``, or PresetError naming ``where.key``."""
    hints = _hints(cls)
    if not isinstance(key, str) or key not in hints:
        raise PresetError(f"{where}: unknown key {short(key)}{closest(key, hints)}; "
                          f"valid keys: {', '.join(sorted(hints))}")
    ok, coerced = _coerce(value, hints[key])
    if not ok:
        raise PresetError(f"{where}.{key}: expected {_describe(hints[key])}, got {short(value)}")
    problem = None if hints[key] is object else _bound(key, coerced)
    if problem:
        raise PresetError(f"{where}.{key}: {problem}")
    return coerced


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; PresetError naming ``where.key`` on any problem."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PresetError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    kwargs = {key: _field(cls, key, value, where) for key, value in data.items()}
    try:  # a stage plug-in's config may raise where it should return its problem
        obj = cls(**kwargs)
        check = getattr(obj, "check", None)
        problem = check() if check else None
    except PresetError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as the value's problem, one line
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise PresetError(f"{where}: {cut(problem)}")
    return obj


def to_mapping(obj: Any) -> dict:
    """Dataclass -> plain dict (for `presets show`)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
