"""How one key's value is read and checked: an env string parsed into the TOML-like value its
type takes, the type checked (bool is never a number, floats are finite), then its bounds."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_KINDS: dict[Any, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def from_env(kind: Any, text: str) -> Any:
    """Parse an env string into the TOML-like value a key of `kind` takes."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if kind in (int, float, str):
            return kind(text)
        if text.startswith("["):
            return json.loads(text)
        item = typing.get_args(kind)[0]
        return [from_env(item, x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected {_KINDS.get(kind, ((), 'a list'))[1]}") from None


def typed(kind: Any, value: Any) -> Any:
    """Check a value against its key's type (bool is never a number); floats must be finite."""
    if kind not in _KINDS:  # tuple[float, ...] or tuple[str, ...]
        item = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of {_KINDS[item][1].split()[-1]}s")
        return tuple(typed(item, x) for x in value)
    types, name = _KINDS[kind]
    if not isinstance(value, types) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"expected {name}")
    if kind is float:
        number = float(typing.cast(float, value))
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    return value


def check(f: dataclasses.Field[Any], value: Any) -> None:
    """A value within its key's bounds and choices (recorded by `sections._key`)."""
    lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
    if choices and str(value) not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    if lo is not None and value < lo:
        raise ValueError(f"expected at least {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"expected at most {hi}")
