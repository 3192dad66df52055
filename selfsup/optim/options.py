"""The optimization options of a run (a module of its own so that declaring them imports no training library)."""

from __future__ import annotations

from typing import List

import attrs

from selfsup.options import option

OPTIMIZERS = ("sgd", "lars")


@attrs.frozen(kw_only=True, slots=False)
class OptimOptions:
    """Optimization"""

    lr: float = option(0.5, "peak learning rate (after warmup)", low=0, low_open=True)
    momentum: float = option(0.9, "SGD / LARS momentum", low=0, high=1)
    weight_decay: float = option(1e-4, "L2 weight decay (not applied to parameters excluded from LARS)", low=0)
    max_epochs: int = option(320, "training length in epochs (the command line passes it to the Trainer)", low=1)
    final_lr_schedule_value: float = option(0.0, "learning rate at the end of the cosine schedule", low=0)
    optimizer_name: str = option("sgd", "'sgd' or 'lars'", choices=OPTIMIZERS)
    lars_warmup_epochs: float = option(1, "LARS only: linear learning-rate warmup length in epochs (applied per "
                                          "step)", low=0)
    lars_eta: float = option(1e-3, "LARS trust coefficient", low=0, low_open=True)
    exclude_matching_parameters_from_lars: List[str] = option(
        help="parameters whose name contains one of these substrings: no LARS, no weight decay", factory=list,
        converter=list)
    exclude_bias_and_norm_from_lars: bool = option(False, "every bias and normalization-layer parameter: no LARS, "
                                                          "no decay")
    use_constant_prediction_lr: bool = option(False, "the prediction MLP keeps the peak learning rate (SimSiam)")
