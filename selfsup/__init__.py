"""selfsup: self-supervised pretraining of image encoders on PyTorch Lightning.

    from selfsup import BYOLParams, SelfSupervisedMethod, LinearClassifierMethod

Folders: ``config`` (fields, presets, recipes), ``methods`` (one file per method family, registered by loss_type),
``nn`` (encoders, heads, target network, queue), ``data`` (datasets, views, loaders), ``optim`` (LARS, schedules,
parameter groups), ``dist`` (collectives, shuffle-BN, SyncBatchNorm), ``eval`` (probes, linear probe), ``train``
(the LightningModule and long-run callbacks), ``cli`` (command lines).
"""

from selfsup.config import *  # noqa: F403 - ModelParams, the presets, make_params
from selfsup.config import __all__ as _config_names
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams
from selfsup.train.module import SelfSupervisedMethod

__all__ = ["LinearClassifierMethod", "LinearClassifierMethodParams", "SelfSupervisedMethod", *_config_names]
