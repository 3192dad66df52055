"""The optimization options of a run (a module of its own so that declaring them imports no training library)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import attrs

from selfsup.options import fail, float_pair, option

OPTIMIZERS = ("sgd", "lars", "adamw")
DEFAULT_ADAMW_BETAS = (0.9, 0.999)


@attrs.frozen(kw_only=True, slots=False)
class OptimOptions:
    """Optimization"""

    lr: float = option(0.5, "peak learning rate (after warmup)", low=0, low_open=True)
    momentum: float = option(0.9, "SGD / LARS momentum", low=0, high=1)
    weight_decay: float = option(1e-4, "weight decay: L2 for SGD / LARS, decoupled for AdamW (not applied to "
                                       "parameters excluded from LARS)", low=0)
    final_weight_decay: Optional[float] = option(None, "weight decay at the end of a cosine schedule from "
                                                       "weight_decay, per step (DINO: 0.04 -> 0.4); None = constant",
                                                 low=0)
    max_epochs: int = option(320, "training length in epochs (the command line passes it to the Trainer)", low=1)
    final_lr_schedule_value: float = option(0.0, "learning rate at the end of the cosine schedule", low=0)
    optimizer_name: str = option("sgd", "'sgd', 'lars' or 'adamw' (the ViT optimizer)", choices=OPTIMIZERS)
    adamw_betas: Tuple[float, float] = option(DEFAULT_ADAMW_BETAS, "AdamW (beta1, beta2); MAE uses (0.9, 0.95)",
                                              converter=float_pair)
    lars_warmup_epochs: float = option(1, "LARS and AdamW: linear learning-rate warmup length in epochs (applied per "
                                          "step); SGD runs have none", low=0)
    lars_eta: float = option(1e-3, "LARS trust coefficient", low=0, low_open=True)
    exclude_matching_parameters_from_lars: List[str] = option(
        help="parameters whose name contains one of these substrings: no LARS, no weight decay", factory=list,
        converter=list)
    exclude_bias_and_norm_from_lars: bool = option(False, "every bias and normalization-layer parameter, and the "
                                                          "position embeddings and class/mask tokens of ViTs: no "
                                                          "LARS, no decay")
    gradient_clip_norm: float = option(0.0, "clip the global L2 norm of the gradients to this value before each "
                                            "optimizer step (DINO: 3.0); 0 = off", low=0)
    use_constant_prediction_lr: bool = option(False, "the prediction MLP keeps the peak learning rate (SimSiam)")


def check_optim_options(o: OptimOptions) -> None:
    """Raise ValueError naming the field for an optimizer field set for another optimizer."""
    if o.optimizer_name != "adamw" and o.adamw_betas != DEFAULT_ADAMW_BETAS:
        fail(o, "adamw_betas", f"set to {o.adamw_betas} but optimizer_name is {o.optimizer_name!r}; betas are "
                               "AdamW's (set optimizer_name='adamw')")
    if o.optimizer_name == "adamw" and o.momentum != 0.9:
        fail(o, "momentum", f"is SGD's and LARS's; AdamW's momentum is adamw_betas[0] (got momentum={o.momentum})")
    if o.final_weight_decay is not None and o.weight_decay == 0:
        fail(o, "final_weight_decay", f"is {o.final_weight_decay} but weight_decay is 0: the schedule runs from "
                                      "weight_decay, so set it to the start value")
    if not all(0 <= b < 1 for b in o.adamw_betas) or len(o.adamw_betas) != 2:
        fail(o, "adamw_betas", f"got {o.adamw_betas}; expected two values in [0, 1)")
