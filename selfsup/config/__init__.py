"""Configuration: :class:`ModelParams` (``params``: the shared fields, every registered method's option group and
the long-run options), the rules across fields (``validation``), the named presets (``presets``) and the recipes
that rescale them (``recipes``). The option groups are declared where their fields are read and re-exported here."""

from selfsup.config import presets as _presets
from selfsup.config.params import LongRunOptions, ModelParams, PresetFunction, make_params, preset_function
from selfsup.config.presets import *  # noqa: F403 - the presets, one per registered recipe
from selfsup.config.recipes import describe_overrides, short_run_overrides, small_run_overrides
from selfsup.data.sources import DataSourceOptions
from selfsup.data.views import ViewOptions
from selfsup.distributed.options import DistributedOptions
from selfsup.methods.options import MethodOptions, SharedParams
from selfsup.nn.backbones import EncoderOptions
from selfsup.nn.heads import HeadOptions, PrototypeOptions
from selfsup.optim.optimizers import OptimOptions
from selfsup.options import build_attrs, option

__all__ = [
    "DataSourceOptions", "DistributedOptions", "EncoderOptions", "HeadOptions", "LongRunOptions", "MethodOptions",
    "ModelParams", "OptimOptions", "PresetFunction", "PrototypeOptions", "SharedParams", "ViewOptions", "build_attrs",
    "describe_overrides", "make_params", "option", "preset_function", "short_run_overrides", "small_run_overrides",
    *_presets.__all__,
]
