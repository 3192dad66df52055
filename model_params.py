"""Public face: ``from model_params import ModelParams, BYOLParams, PRESETS, ...`` (the code lives in
selfsup.config)."""

from selfsup.config import *  # noqa: F403
from selfsup.config import __all__  # noqa: F401
