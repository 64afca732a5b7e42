"""Validated method configs: frozen dataclasses whose fields carry their rule, built once by `from_mapping`.

A config class declares each setting with `setting(default, rule)`; `from_mapping(cls, values, prefix)`
turns a config node (a mapping, e.g. `method.score` after Hydra) into an instance:

  * an unknown key is refused, listing the known ones (and the nearest, for a typo);
  * a nested config field (its type is itself a config dataclass) is built from its sub-mapping,
    recursively, with the key path extended (`method.mask.blur.sigma`);
  * every value is checked against its rule before the instance exists (finite numbers, ranges,
    enums, types), then converted if the rule says so (a list of layer names -> a tuple);
  * cross-field rules live in an optional `check(self, prefix)` method, run on the built instance.

Every refusal is one `ConfigError` whose message names the full key, the value, the rule and the
fix. Code below a config trusts it: the pure functions that receive a validated config (or its
fields) do not check again. A dataclass constructed directly is not validated: build with
`from_mapping`.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar, get_type_hints

from bench.sd.errors import ConfigError

T = TypeVar("T")
RULE = "rule"  # the key of a field's Rule in its dataclass metadata


@dataclass(frozen=True)
class Rule:
    """What a setting accepts.

    `expected` completes "<key>=<value> is not ..."; `accepts` must not raise for any value (an
    exception counts as a refusal); `convert` normalises an accepted value (list -> tuple); `hint`
    is extra advice after the fix, formatted with {key} (the full key) and {node} (its parent).
    """

    expected: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] | None = None
    hint: str | None = None


def setting(default: Any = MISSING, rule: Rule | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its rule (no rule: any value; a nested config needs `factory` and no rule)."""
    metadata = {RULE: rule} if rule is not None else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# -- rules -------------------------------------------------------------------------------------------
def is_real(value: Any) -> bool:
    """A real number that is not a bool (True is an int to Python, never a setting's number)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def one_of(allowed: Sequence[str]) -> Rule:
    allowed = tuple(allowed)
    return Rule(f"one of {list(allowed)}", lambda v: isinstance(v, str) and v in allowed)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def text() -> Rule:
    return Rule("a string", lambda v: isinstance(v, str))


def real(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str | None = None,
) -> Rule:
    """A finite number, optionally in [low, high] (`low_open`/`high_open` exclude the end); NaN and inf never pass."""

    def accepts(v: Any) -> bool:
        if not is_real(v) or not math.isfinite(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    if low is not None and high is not None:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        expected = f"a finite number in {span}"
    elif low is not None:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        expected = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        expected = "a finite number"
    return Rule(expected, accepts, hint=hint)


def integer(minimum: int | None = None, *, odd: bool = False, hint: str | None = None) -> Rule:
    """An integer (not a bool, not a float), optionally >= minimum and odd."""

    def accepts(v: Any) -> bool:
        return is_integer(v) and (minimum is None or v >= minimum) and (not odd or v % 2 == 1)

    expected = f"{'an odd' if odd else 'an'} integer" + (f" >= {minimum}" if minimum is not None else "")
    return Rule(expected, accepts, hint=hint)


# -- building ----------------------------------------------------------------------------------------
def from_mapping(cls: type[T], values: Mapping | None, prefix: str, aliases: Mapping[str, str] | None = None) -> T:
    """A validated `cls` from a config node; None is the empty node (all defaults).

    `prefix` is the node's full key (`method.score`); `aliases` maps a field name to the key the node
    uses for it (BlendedLatent's `score_indices` is GradSAM's `injection_indices`).
    """
    if values is None:
        values = {}
    aliases = dict(aliases or {})
    keys = {aliases.get(f.name, f.name): f for f in fields(cls)}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{prefix}={values!r} is not a mapping. Fix: give {prefix} as a mapping with keys from {sorted(keys)}."
        )
    unknown = sorted(str(k) for k in set(values) - set(keys))
    if unknown:
        near = {k: difflib.get_close_matches(k, list(keys), n=1) for k in unknown}
        hints = [f"{m[0]!r} for {k!r}" for k, m in near.items() if m]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(
            f"{prefix} has unknown keys {unknown}{hint}; known: {sorted(keys)}. "
            f"Fix: rename or remove them (the method's YAML, an ablation, or a command-line override)."
        )
    hints = get_type_hints(cls)
    kwargs = {}
    for key, f in keys.items():
        if key not in values:
            continue
        value, full = values[key], f"{prefix}.{key}"
        nested = hints.get(f.name)
        if isinstance(nested, type) and is_dataclass(nested):
            if isinstance(value, nested):
                value = {g.name: getattr(value, g.name) for g in fields(nested)}  # an instance is checked too
            kwargs[f.name] = from_mapping(nested, value, full)
            continue
        rule: Rule | None = f.metadata.get(RULE)
        if rule is not None:
            check_value(full, value, rule, default_of(f))
            value = rule.convert(value) if rule.convert is not None else value
        kwargs[f.name] = value
    config = cls(**kwargs)  # omitted keys take the class defaults, which are trusted
    check = getattr(config, "check", None)
    if check is not None:
        check(prefix)
    return config


def check_value(key: str, value: Any, rule: Rule, default: Any = MISSING) -> None:
    """Refuse a value its rule does not accept: the key, the value, the rule and the fix."""
    try:
        ok = bool(rule.accepts(value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        return
    fix = f"set {key} to {rule.expected}"
    if default is not MISSING:
        fix += f" (the default is {key}={override(default)})"
    if rule.hint:
        fix += "; " + rule.hint.format(key=key, node=key.rpartition(".")[0])
    raise ConfigError(f"{key}={value!r} is not {rule.expected}. Fix: {fix}.")


def default_of(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def override(value: Any) -> str:
    """A value as a Hydra override writes it: true, [5,18,28], abs."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(override(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return repr(value)  # '', '{scene}': quoted, or Hydra would read them as null or a dict
    return str(value)
