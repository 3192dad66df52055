"""selfsup: self-supervised pretraining of image encoders on PyTorch Lightning.

    from selfsup import BYOLParams, SelfSupervisedMethod, LinearClassifierMethod

Layers, bottom to top: ``options`` (declaring a field), ``distributed`` (collectives, shuffle-BN, SyncBatchNorm),
``nn`` (encoders, heads, target network, memory), ``optim`` (LARS, schedules, parameter groups), ``data`` (datasets,
views, loaders), ``methods`` (one file per method family, registered by loss_type), ``config`` (ModelParams,
presets, recipes), ``eval`` (probes, linear probe), ``train`` (the LightningModule and long-run callbacks), ``cli``
(command lines); docs/architecture.md maps them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from selfsup import config
from selfsup.config import *  # noqa: F403 - ModelParams, the presets, make_params
from selfsup.config.presets import *  # noqa: F403 - the presets again, for type checkers (config/presets.pyi)

if TYPE_CHECKING:
    from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams
    from selfsup.train.module import SelfSupervisedMethod

# The LightningModules load on first use, so that importing the linear probe pulls in no training code.
_MODULES = {
    "SelfSupervisedMethod": "selfsup.train.module",
    "LinearClassifierMethod": "selfsup.eval.linear",
    "LinearClassifierMethodParams": "selfsup.eval.linear",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")


__all__ = ["LinearClassifierMethod", "LinearClassifierMethodParams", "SelfSupervisedMethod"]
__all__ += config.__all__  # the form type checkers follow
