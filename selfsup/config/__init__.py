"""Configuration: the fields of a run (``fields``, declared with ``options``), the rules across them
(``validation``), the named presets (``presets``) and the recipes that rescale them (``recipes``)."""

from selfsup.config import presets as _presets
from selfsup.config.fields import (
    DataSourceOptions,
    DistributedOptions,
    EncoderOptions,
    HeadOptions,
    LongRunOptions,
    MethodOptions,
    ModelParams,
    OptimOptions,
    PrototypeOptions,
    ViewOptions,
)
from selfsup.config.options import build_attrs, option
from selfsup.config.presets import *  # noqa: F403 - the presets, one per registered recipe
from selfsup.config.recipes import describe_overrides, short_run_overrides, small_run_overrides

__all__ = [
    "DataSourceOptions", "DistributedOptions", "EncoderOptions", "HeadOptions", "LongRunOptions", "MethodOptions",
    "ModelParams", "OptimOptions", "PrototypeOptions", "ViewOptions", "build_attrs", "option",
    "describe_overrides", "short_run_overrides", "small_run_overrides", *_presets.__all__,
]
