"""Declaring options: attrs fields that carry their help text, allowed values and range as metadata.

One declaration gives the field, its validation (:func:`check_fields`), its command-line flag with help, and its row
in docs/options.md. Options are grouped in small frozen attrs classes (``@attrs.frozen(kw_only=True, slots=False)``,
without slots so that a params class can inherit several groups), whose docstring's first line titles the group:
``ModelParams`` and the linear probe's params share the encoder and data groups instead of re-declaring them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Dict, Mapping, NoReturn, Optional, Sequence, Tuple, Type, TypeVar, Union

import attr

T = TypeVar("T", bound=attr.AttrsInstance)  # an attrs class
Choices = Union[Sequence[Any], Callable[[], Sequence[Any]]]  # a list, or a function computing it when needed

HELP, CHOICES, RANGE = "help", "choices", "range"


def option(
    default: Any = attr.NOTHING,
    help: str = "",
    *,
    choices: Optional[Choices] = None,
    low: Optional[float] = None,
    high: float = math.inf,
    low_open: bool = False,
    factory: Optional[Callable[[], Any]] = None,
    converter: Optional[Callable[[Any], Any]] = None,
) -> Any:
    """A field with its help text, its allowed values (``choices``) or its range [low, high] ((low, high] with
    ``low_open``); None is always allowed for a field whose default is None."""
    metadata: Dict[str, Any] = {HELP: help, CHOICES: choices, RANGE: None if low is None else (low, high, low_open)}
    if factory is not None:
        return attr.ib(factory=factory, converter=converter, metadata=metadata)
    return attr.ib(default=default, converter=converter, metadata=metadata)


def float_pair(value: Any) -> Tuple[float, float]:
    """The converter of a (low, high) field: any pair of numbers (a list from a config file, too) as floats."""
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def did_you_mean(value: str, candidates: Sequence[str], n: int = 1, prefix: str = "") -> str:
    """" Did you mean 'a', 'b'?" naming the ``n`` candidates closest to ``value`` (each shown with ``prefix``), or
    "" when none is close."""
    close = difflib.get_close_matches(value, candidates, n=n)
    return f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def allowed_values(field: attr.Attribute) -> Optional[Tuple[Any, ...]]:
    choices = field.metadata.get(CHOICES)
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def range_text(field: attr.Attribute) -> Optional[str]:
    """"[1, inf]" or "(0, inf]" for a field with a range, else None."""
    bounds = field.metadata.get(RANGE)
    if bounds is None:
        return None
    low, high, low_open = bounds
    return f"{'(' if low_open else '['}{low}, {high}]"


def fail(owner: Any, field: str, message: str) -> NoReturn:
    """Raise ValueError("<Class>.<field>: <message>")."""
    name = owner if isinstance(owner, str) else type(owner).__name__
    raise ValueError(f"{name}.{field}: {message}")


def check_fields(instance: Any) -> None:
    """Check every field of an attrs instance against its declared choices and range; raise ``ValueError`` naming
    the class and the field, with the allowed values (and the closest one) or the range."""
    for field in attr.fields(type(instance)):
        value = getattr(instance, field.name)
        if value is None and field.default is None:
            continue
        allowed = allowed_values(field)
        if allowed is not None and value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            fail(instance, field.name,
                 f"got {value!r}; allowed values are {', '.join(repr(a) for a in allowed)}.{hint}")
        bounds = field.metadata.get(RANGE)
        if bounds is not None:
            low, high, low_open = bounds
            below = value <= low if low_open else value < low
            if below or value > high:
                fail(instance, field.name, f"got {value!r}; expected a value in {range_text(field)}")


def build_attrs(cls: Type[T], params: Optional[Mapping[str, Any] | Any] = None, **overrides: Any) -> T:
    """An instance of the attrs class ``cls`` from an instance, a dict of fields or None, with keyword overrides on
    top; an unknown name raises ``ValueError`` (with the closest field name), so no override is silently dropped."""
    if isinstance(params, cls):
        base: Dict[str, Any] = attr.asdict(params, recurse=False)
    elif params is None:
        base = {}
    elif isinstance(params, Mapping):
        base = dict(params)
    else:
        raise TypeError(f"params must be {cls.__name__}, a dict or None, not {type(params).__name__}")
    fields = attr.fields_dict(cls)
    merged = {**base, **overrides}
    unknown = [name for name in merged if name not in fields]
    if unknown:
        hints = [
            f"{u!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(u, fields, n=1)) else "")
            for u in unknown
        ]
        raise ValueError(f"{cls.__name__} has no field {', '.join(hints)}")
    return cls(**merged)


def option_groups(cls: type) -> Dict[str, list]:
    """Group title -> the fields of ``cls`` that the option group of that title declares, in field order."""
    title_of: Dict[str, str] = {}
    for base in cls.__mro__:
        if attr.has(base) and base is not cls:
            title = (base.__doc__ or base.__name__).strip().splitlines()[0].rstrip(".")
            for name in base.__dict__.get("__annotations__", {}):
                title_of.setdefault(name, title)
    groups: Dict[str, list] = {}
    for field in attr.fields(cls):
        groups.setdefault(title_of.get(field.name, cls.__name__), []).append(field)
    return groups
