"""How an experiment spec compares its arms: the pairs compared, contrasts, equivalence
margins in each measure's units, and the published directions with the primary ones among them.

Also the small checks every part of a spec uses (:func:`check_keys`, :func:`number`,
:func:`names`, :func:`choice`): each raises a one-line :class:`~tdsnn.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from tdsnn.errors import ConfigError
from tdsnn.experiment.stats import margin_for, measure_key

__all__ = [
    "Direction",
    "check_keys",
    "choice",
    "name_list",
    "number",
    "parse_comparisons",
    "parse_contrasts",
    "parse_directions",
    "parse_equivalence",
    "mark_primary",
]

DIRECTION_KEYS = (
    "name", "claim", "source", "setting", "arms", "measure", "level", "expect", "margin",
)  # fmt: skip
EXPECT = ("higher", "lower")


@dataclass(frozen=True)
class Direction:
    """A published direction: ``treatment − control`` on ``measure`` should be ``expect``."""

    name: str
    claim: str
    source: str
    setting: str
    control: str
    treatment: str
    measure: str
    level: float | None
    expect: str  # higher | lower
    margin: float | None  # TOST margin of "equivalent", in the measure's units
    primary: bool = True  # corrected with the other primary directions; else exploratory


def check_keys(data: dict, valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid: {list(valid)}")


def choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def name_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of names, got {value!r}")
    return value


def parse_equivalence(value: Any, measured: list[str]) -> dict[str, float]:
    """``equivalence``: ``{measure: margin}`` in each measure's units. One number is accepted
    only for a spec that measures one thing (``measured``: what the spec measures, by name)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): number(v, f"equivalence.{k}", 1e-12, 1e12) for k, v in value.items()}
    margin = number(value, "equivalence", 1e-12, 1e12)
    if len(measured) > 1:
        raise ConfigError(
            f"equivalence: one margin ({margin:g}) for measures in different units "
            f"({', '.join(measured)}); give one per measure, e.g. equivalence: "
            f"{{{measured[0]}: {margin:g}}}"
        )
    return {measured[0]: margin} if measured else {}


def parse_comparisons(value: Any, arms: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return tuple((a, b) for i, a in enumerate(arms) for b in arms[i + 1 :])
    if not isinstance(value, list):
        raise ConfigError(f"comparisons must be a list of [arm, arm] pairs, got {value!r}")
    pairs = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"comparisons: {pair!r} is not a pair [arm, arm]")
        unknown = [a for a in pair if a not in arms]
        if unknown:
            raise ConfigError(f"comparisons: unknown arm(s) {unknown}; arms: {list(arms)}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def parse_directions(
    value: Any, arms: tuple[str, ...], equivalence: dict[str, float]
) -> tuple[Direction, ...]:
    if not isinstance(value, list):
        raise ConfigError("directions must be a list of {name, claim, arms, measure, expect, ...}")
    out = []
    for i, entry in enumerate(value):
        where = f"directions[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with keys {list(DIRECTION_KEYS)}")
        check_keys(entry, DIRECTION_KEYS, where)
        for key in ("name", "claim", "arms", "measure", "expect"):
            if key not in entry:
                raise ConfigError(f"{where} has no {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+/-]*", name):
            raise ConfigError(f"{where}.name {name!r} must be letters, digits, '_', '.', '+', "
                              "'/' or '-'")  # fmt: skip
        if name in [d.name for d in out]:
            raise ConfigError(f"{where}.name {name!r} names an earlier direction too")
        pair = entry["arms"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(a in arms for a in pair)):
            raise ConfigError(f"{where}.arms must be [control, treatment] of the arms {list(arms)}")
        if entry["expect"] not in EXPECT:
            raise ConfigError(f"{where}.expect must be one of {list(EXPECT)}")
        level = None if entry.get("level") is None else number(
            entry["level"], f"{where}.level", 0, 1e6)  # fmt: skip
        margin = entry.get("margin")
        if margin is None:
            margin = margin_for(equivalence, measure_key(str(entry["measure"]), level))
        out.append(Direction(
            name=name,
            claim=str(entry["claim"]),
            source=str(entry.get("source", "")),
            setting=str(entry.get("setting", "")),
            control=pair[0],
            treatment=pair[1],
            measure=str(entry["measure"]),
            level=level,
            expect=entry["expect"],
            margin=None if margin is None else number(margin, f"{where}.margin", 1e-12, 1e12),
        ))  # fmt: skip
    return tuple(out)


def mark_primary(value: Any, directions: tuple[Direction, ...]) -> tuple[Direction, ...]:
    """Mark the directions ``primary`` names (default: every one); the others are exploratory."""
    if value is None:
        return directions
    names = [d.name for d in directions]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"primary must be a list of direction names, got {value!r}")
    unknown = [v for v in value if v not in names]
    if unknown:
        raise ConfigError(
            f"primary names direction(s) {unknown} that do not exist; directions: {names}"
        )
    return tuple(dataclasses.replace(d, primary=d.name in value) for d in directions)


def parse_contrasts(value: Any, arms: tuple[str, ...]) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise ConfigError("contrasts must map a name to {arm: weight, ...}")
    out = {}
    for name, weights in value.items():
        if not isinstance(weights, dict) or not weights:
            raise ConfigError(f"contrast {name!r} must map arms to weights")
        unknown = [a for a in weights if a not in arms]
        if unknown:
            raise ConfigError(f"contrast {name!r}: unknown arm(s) {unknown}; arms: {list(arms)}")
        out[str(name)] = {a: number(w, f"contrast {name!r}", -1e6, 1e6) for a, w in weights.items()}
    return out
