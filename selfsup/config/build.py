"""Building validated params: from a params object, a dict of fields or keywords (:func:`make_params`), and a
registered recipe as the public function that builds it (:func:`preset_function`, what selfsup.config.presets
holds)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from selfsup.config.params import ModelParams
from selfsup.methods.preset import Preset
from selfsup.options import build_attrs

PresetFunction = Callable[..., ModelParams]


def make_params(params: Optional[Mapping[str, Any] | ModelParams] = None, **overrides: Any) -> ModelParams:
    """Build validated params from a ``ModelParams``, a dict of fields, or keywords; unknown names raise."""
    return build_attrs(ModelParams, params, **overrides)


def preset_function(spec: Preset) -> PresetFunction:
    """The public function of the recipe ``spec``: its fields, with the caller's overrides on top, validated."""

    def make(**overrides: Any) -> ModelParams:
        return make_params(spec.resolve(overrides))

    make.__name__ = make.__qualname__ = spec.name
    make.__module__ = "selfsup.config.presets"
    fields = ", ".join(f"{k}={v!r}" for k, v in spec.fields.items())
    make.__doc__ = spec.doc + (f"\n\nFields set: {fields}" if fields else "")
    return make
