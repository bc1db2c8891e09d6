"""Config fields whose type and range are declared once, next to the field, and checked once.

Every config dataclass (the sections of :class:`tdsnn.config.RunConfig` and
:class:`tdsnn.topo.TopoConfig`) declares its fields with :func:`option` and calls
:func:`check_fields` in ``__post_init__``. Values are converted to the annotated type (strings
from the command line or YAML included) and checked against the declared range or choices, so a
config is valid however it was built; any bad value is a :class:`~tdsnn.errors.ConfigError`
that names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from tdsnn.errors import ConfigError

__all__ = ["option", "check_fields", "coerce"]

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def option(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[str] | None = None,
) -> Any:
    """A dataclass field with its allowed values: ``[low, high]`` (``(low, high]`` with
    ``low_open``) for numbers, ``choices`` for strings. ``None`` passes where the type allows it."""
    rule = {"low": low, "high": high, "low_open": low_open, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option() defaults must be immutable")
    return dataclasses.field(default=default, metadata={"rule": rule})


def check_fields(obj: Any, section: str) -> None:
    """Convert every field of the frozen dataclass ``obj`` to its type and check its rule."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{section}.{f.name}"
        value = coerce(getattr(obj, f.name), hints[f.name], name)
        rule = f.metadata.get("rule")
        if rule is not None and value is not None:
            _check_rule(value, rule, name)
        object.__setattr__(obj, f.name, value)


def _check_rule(value: Any, rule: dict, name: str) -> None:
    if rule["choices"] is not None:
        if value not in rule["choices"]:
            raise ConfigError(f"{name} {value!r} is not valid; choose from {list(rule['choices'])}")
        return
    if not isinstance(value, (int, float)):
        return
    low, high, low_open = rule["low"], rule["high"], rule["low_open"]
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high or not math.isfinite(value):
        raise ConfigError(f"{name} must be in {_interval(low, high, low_open)}, got {value!r}")


def _interval(low: float | None, high: float | None, low_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = "]" if high is not None else ")"
    return f"{left}{_number(low, '-inf')}, {_number(high, 'inf')}{right}"


def _number(x: float | None, none: str) -> str:
    if x is None:
        return none
    return f"{x:g}" if isinstance(x, float) else str(x)


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as ``annotation`` (bool, int, float, str, their Optionals and tuples).

    Strings (from the command line or YAML) are parsed; anything that does not convert exactly
    is a ConfigError naming ``name``.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(annotation), name)
    if origin is tuple:
        return _coerce_tuple(value, annotation, name)
    if annotation is bool:
        return _coerce_bool(value, name)
    if annotation in (int, float):
        return _coerce_number(value, annotation, name)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    return value


def _coerce_union(value: Any, options: tuple, name: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in options:
            return None
    errors = []
    for option_type in options:
        if option_type is type(None):
            continue
        try:
            return coerce(value, option_type, name)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")


def _coerce_tuple(value: Any, annotation: Any, name: str) -> tuple:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {value!r}")
    (item_type, *_) = typing.get_args(annotation) or (str,)
    return tuple(coerce(v, item_type, name) for v in value)


def _coerce_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _coerce_number(value: Any, annotation: type, name: str) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if annotation is float:
            return float(number)
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{name} must be {'an integer' if annotation is int else 'a number'}, got {value!r}"
        ) from None
