"""The registry of methods: every method file registers its :class:`~selfsup.methods.method.Method` under its
loss_type values (and their older aliases); the config layer assembles ModelParams from the registered option groups
and the preset functions from the registered presets."""

from __future__ import annotations

from typing import Dict, List, Tuple, Type, TypeVar

import attr

from selfsup.methods.method import Method
from selfsup.methods.options import LOSS_TYPE_NAMES, SharedParams, loss_types
from selfsup.methods.preset import Preset

M = TypeVar("M", bound=Type[Method])
REGISTRY: Dict[str, Method] = {}  # loss_type (a method's name, or an older alias of it) -> its method


def register(cls: M) -> M:
    """Class decorator: register an instance of a :class:`Method` subclass under each of its loss_types, and its
    aliases as other names of them."""
    if not cls.loss_types:
        raise TypeError(f"{cls.__name__} declares no loss_types: a registered method needs at least one name")
    method = cls()
    for name in (*cls.loss_types, *cls.aliases):
        if name in LOSS_TYPE_NAMES:
            owner = REGISTRY[name]
            raise ValueError(f"loss_type {name!r} is registered twice: {type(owner).__name__}, {cls.__name__}")
    for alias, name in cls.aliases.items():
        if name not in cls.loss_types:
            raise ValueError(f"{cls.__name__}.aliases: {alias!r} names {name!r}, which is not one of its loss_types")
    LOSS_TYPE_NAMES.update({name: name for name in cls.loss_types}, **cls.aliases)
    REGISTRY.update({name: method for name in (*cls.loss_types, *cls.aliases)})
    return cls


def methods() -> List[Method]:
    """Every registered method once, in registration order."""
    return list(dict.fromkeys(REGISTRY.values()))


def method_of(loss_type: str) -> Method:
    """The registered method of ``loss_type`` (or of an older alias of it)."""
    try:
        return REGISTRY[loss_type]
    except KeyError:
        raise ValueError(f"loss_type {loss_type!r} is not registered; registered: {', '.join(loss_types())}") from None


def option_groups() -> Tuple[type, ...]:
    """The option groups of the registered methods, in registration order, after checking that no field is declared
    twice (by two groups, or by a group and SharedParams)."""
    owners: Dict[str, str] = {field.name: "SharedParams" for field in attr.fields(SharedParams)}
    groups = tuple(method.options for method in methods() if method.options is not None)
    for group in groups:
        for field in attr.fields(group):
            if field.name in owners:
                raise TypeError(f"{group.__name__}.{field.name} is declared by {owners[field.name]} too")
            owners[field.name] = group.__name__
    return groups


def model_params_bases() -> Tuple[type, ...]:
    """The bases of ModelParams: the registered methods' option groups, last to first (attrs puts the fields of the
    last base first, so ModelParams lists them in registration order), then SharedParams."""
    return (*reversed(option_groups()), SharedParams)


def preset_specs() -> Dict[str, Preset]:
    """Every registered method's presets, by command-line name."""
    return {spec.key: spec for method in methods() for spec in method.presets}
