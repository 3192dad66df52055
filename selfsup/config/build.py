"""Building validated params: from a params object, a dict of fields or keywords (:func:`make_params`), and each
registered recipe as the public function that builds it (:func:`preset_function`; :data:`PRESETS`, which
selfsup.config.presets also holds under the functions' public names)."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Collection, Dict, Mapping, Optional

from selfsup import methods
from selfsup.config.params import ModelParams
from selfsup.methods.preset import Preset
from selfsup.options import build_attrs

PresetFunction = Callable[..., ModelParams]


def make_params(params: Optional[Mapping[str, Any] | ModelParams] = None, **overrides: Any) -> ModelParams:
    """Build validated params from a ``ModelParams``, a dict of fields, or keywords; unknown names raise."""
    return build_attrs(ModelParams, params, **overrides)


def warn_fields_added_since(params: ModelParams, saved: Collection[str], source: str) -> None:
    """Warn for each field that ``source`` (a checkpoint, a configuration file), which saved the fields ``saved``,
    predates, and whose value in ``params`` changes what the saved run did (``Method.legacy_defaults``)."""
    for field, value in params.method.legacy_defaults.items():
        if field not in saved and getattr(params, field) != value:
            warnings.warn(f"{source} was written before ModelParams.{field} existed, by a run that behaved as "
                          f"{field}={value!r}; these params have {getattr(params, field)!r}: set {field}={value!r} "
                          "to continue that run unchanged", UserWarning, stacklevel=3)


def preset_function(spec: Preset) -> PresetFunction:
    """The public function of the recipe ``spec``: its fields, with the caller's overrides on top, validated."""

    def make(**overrides: Any) -> ModelParams:
        return make_params(spec.resolve(overrides))

    make.__name__ = make.__qualname__ = spec.name
    make.__module__ = "selfsup.config.presets"
    fields = ", ".join(f"{k}={v!r}" for k, v in spec.fields.items())
    make.__doc__ = spec.doc + (f"\n\nFields set: {fields}" if fields else "")
    return make


PRESET_SPECS: Dict[str, Preset] = dict(methods.preset_specs())  # command-line name -> its recipe and description
PRESETS: Dict[str, PresetFunction] = {key: preset_function(spec) for key, spec in PRESET_SPECS.items()}


def preset(key: str) -> PresetFunction:
    """The preset function registered under the command-line name ``key`` (``preset("byol") is BYOLParams``)."""
    return PRESETS[key]
