"""Configuration: :class:`ModelParams` (``params``: the shared fields and every registered method's option group),
the rules across fields (``validation``), building params (``build``), the named presets (``presets``) and the
recipes that rescale them (``recipes``). The option groups are declared in the lowest layer that needs them and
re-exported here."""

from selfsup.config import presets
from selfsup.config.build import preset_function
from selfsup.config.params import ModelParams
from selfsup.config.presets import *  # noqa: F403 - the presets (and make_params, preset, PRESETS)
from selfsup.config.recipes import describe_overrides, short_run_overrides, small_run_overrides
from selfsup.data.sources import DataSourceOptions
from selfsup.data.views import ViewOptions
from selfsup.distributed.options import DistributedOptions
from selfsup.methods.options import LongRunOptions, MethodOptions, OnlineProbeOptions, SharedParams
from selfsup.nn.backbones import EncoderOptions
from selfsup.nn.heads import HeadOptions, PrototypeOptions
from selfsup.optim.options import OptimOptions
from selfsup.options import build_attrs, option

__all__ = [
    "DataSourceOptions", "DistributedOptions", "EncoderOptions", "HeadOptions", "LongRunOptions", "MethodOptions",
    "ModelParams", "OnlineProbeOptions", "OptimOptions", "PrototypeOptions", "SharedParams", "ViewOptions",
    "build_attrs", "describe_overrides", "option", "preset_function", "short_run_overrides", "small_run_overrides",
]
__all__ += presets.__all__  # the form type checkers follow
