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
import re
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from tdsnn.errors import ConfigError, UserError

__all__ = ["option", "check_fields", "coerce", "from_args"]

T = TypeVar("T")

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def option(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[str | int] | None = None,
) -> Any:
    """A dataclass field with its allowed values: ``[low, high]`` (``(low, high]`` with
    ``low_open``) for numbers, or ``choices``. ``None`` passes where the type allows it; floats
    must be finite whatever the rule."""
    rule = {"low": low, "high": high, "low_open": low_open, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option() defaults must be immutable")
    return dataclasses.field(default=default, metadata={"rule": rule})


def check_fields(obj: Any, section: str) -> None:
    """Convert every field of the frozen dataclass ``obj`` to its type and check its rule.

    A value that does not convert or breaks the rule is a ConfigError such as
    ``optim.lr must be a finite number in (0, 100], got 'nan'``; with ``section`` empty, the
    field's own name (a function's parameter) starts the message.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{section}.{f.name}" if section else f.name
        received = getattr(obj, f.name)
        rule = f.metadata.get("rule")
        try:
            value = coerce(received, hints[f.name], name)
        except ConfigError as exc:
            raise _field_error(name, received, hints[f.name], rule) from exc
        if rule is not None and value is not None and not _obeys(value, rule):
            raise _field_error(name, received, hints[f.name], rule)
        object.__setattr__(obj, f.name, value)


def _obeys(value: Any, rule: dict) -> bool:
    if rule["choices"] is not None:
        return value in rule["choices"]
    if not isinstance(value, (int, float)):
        return True
    low, high = rule["low"], rule["high"]
    above_low = low is None or (value > low if rule["low_open"] else value >= low)
    return above_low and (high is None or value <= high)


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _field_error(name: str, received: Any, annotation: Any, rule: dict | None) -> ConfigError:
    """``name must be <what the field accepts>, got <received>``."""
    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    (kind,) = (a for a in args if a is not type(None))
    if rule is not None and rule["choices"] is not None:
        expected = f"one of {list(rule['choices'])}"
    else:
        expected = _KINDS.get(kind, "a list")
        if rule is not None and (rule["low"] is not None or rule["high"] is not None):
            expected += f" in {_interval(rule['low'], rule['high'], rule['low_open'])}"
    if type(None) in args:
        expected += " or null"
    return ConfigError(f"{name} must be {expected}, got {received!r}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _interval(low: float | None, high: float | None, low_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = "]" if high is not None else ")"
    return f"{left}{_number(low, '-inf')}, {_number(high, 'inf')}{right}"


def _number(x: float | None, none: str) -> str:
    if x is None:
        return none
    return str(int(x)) if float(x).is_integer() else f"{x:g}"  # 1e6 -> 1000000


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as ``annotation`` (bool, int, float, str, their Optionals and tuples).

    Strings (from the command line or YAML) are parsed; anything that does not convert exactly
    is a ConfigError naming ``name``.
    """
    if _is_union(annotation):
        return _coerce_union(value, typing.get_args(annotation), name)
    if typing.get_origin(annotation) is tuple:
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
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value) if isinstance(value, str) else value
        if annotation is float:
            number = float(number)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{name} must be {_KINDS[annotation]}, got {value!r}") from exc


def from_args(cls: type[T], args: Any) -> T:
    """The dataclass ``cls`` of :func:`option` fields (checked with an empty section) built
    from the parsed command line ``args``, whose ``dest`` names are the field names.

    The check is the one a Python caller gets; the error names the flag instead of the
    parameter: ``steps must be ...`` becomes ``--steps must be ...``.
    """
    fields = [f for f in dataclasses.fields(cls) if hasattr(args, f.name)]
    with flag_errors(*(f.name for f in fields)):
        return cls(**{f.name: getattr(args, f.name) for f in fields})


def as_flags(message: str, names: Sequence[str]) -> str:
    """``message`` (in a library's parameter terms) in a command line's: for each parameter
    ``name``, a leading ``name`` (``steps must be ...``, ``resume: ...``) and the forms
    ``name='value'``, ``name=True`` and ``with name=False`` become ``--name value``, ``--name``
    and ``without --name``; names with an underscore (``dt_ms``) become flags anywhere."""
    for name in names:
        flag = "--" + name.replace("_", "-")
        if message.startswith((f"{name} ", f"{name}:")):
            message = flag + message[len(name) :]
        word = re.escape(name)
        message = re.sub(rf"\bwith {word}=False\b", f"without {flag}", message)
        message = re.sub(rf"\b{word}=True\b", flag, message)
        message = re.sub(rf"\b{word}='([^']*)'", rf"{flag} \1", message)
        if "_" in name:
            message = re.sub(rf"(?<![-\w]){word}\b", flag, message)
    return message.replace(" or null, got", ", got")  # None has no flag spelling


@contextmanager
def flag_errors(*names: str) -> Iterator[None]:
    """Inside, a :class:`~tdsnn.errors.UserError` that names the parameters ``names`` is raised
    again, of the same type, naming the command line's flags instead (:func:`as_flags`)."""
    try:
        yield
    except UserError as exc:
        message = as_flags(str(exc), names)
        if message == str(exc):
            raise
        raise type(exc)(message) from exc
