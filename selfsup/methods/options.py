"""The fields every method may read (:class:`SharedParams`: the encoder, data, view, head, optimization,
distributed, long-run and online-probe groups plus :class:`MethodOptions`), the table of registered ``loss_type``
names, and the errors and warnings of a ModelParams field.

A method reads these fields and its own option group (``Method.options``); ``selfsup.config.ModelParams`` is
SharedParams plus the option group of every registered method, so the fields a method reads are all in it.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, NoReturn, Tuple, Type, TypeVar

import attrs

from selfsup import options
from selfsup.data.sources import DataSourceOptions
from selfsup.data.views import ViewOptions
from selfsup.distributed.options import DistributedOptions
from selfsup.nn.backbones import EncoderOptions
from selfsup.nn.heads import HeadOptions, PrototypeOptions
from selfsup.optim.options import OptimOptions
from selfsup.options import option

G = TypeVar("G")
VIEW_PAIR_REDUCTIONS = ("sum", "mean")
# Every accepted loss_type value -> the name of its method: each method's names and the older names it still accepts
# (methods.registry.register fills it in).
LOSS_TYPE_NAMES: Dict[str, str] = {}


def loss_types() -> Tuple[str, ...]:
    """The registered loss_type values, without the older aliases."""
    return tuple(dict.fromkeys(LOSS_TYPE_NAMES.values()))


def canonical_loss_type(name: Any) -> Any:
    """The method's name for ``name`` (an older alias such as "ip" becomes "byol"); anything else unchanged."""
    return LOSS_TYPE_NAMES.get(name, name) if isinstance(name, str) else name


def fail(field: str, message: str) -> NoReturn:
    """Raise the ValueError of an impossible ModelParams setting."""
    options.fail("ModelParams", field, message)


def check_transformer_width(width_field: str, width: int, heads_field: str, heads: int) -> None:
    """The width of a masked method's light transformer (MAE's decoder, I-JEPA's predictor) splits into its heads and,
    for the 2-D sine-cosine position embeddings, into 4."""
    if width % heads or width % 4:
        fail(width_field, f"{width} must be divisible by {heads_field} ({heads}) and by 4 (sine-cosine position "
                          "embeddings)")


def suspicious(message: str) -> None:
    """Warn about a legal but suspicious ModelParams setting."""
    warnings.warn(f"Suspicious configuration: {message}", UserWarning, stacklevel=5)


def options_of(p: SharedParams, group: Type[G]) -> G:
    """``p`` as its option group ``group`` (ModelParams inherits the group of every registered method)."""
    if not isinstance(p, group):
        raise TypeError(f"{type(p).__name__} has no {group.__name__} fields: the method that declares them is not "
                        "part of this params class (it was registered after ModelParams was assembled)")
    return p


@attrs.frozen(kw_only=True, slots=False)
class MethodOptions:
    """Method: embeddings, target network, negatives"""

    loss_type: str = option("contrastive", "the method, by its registered name (docs/methods.md); the older names "
                                           "(ce, bce, ip, neg_cos, vic, barlow) are accepted and mean the same",
                            choices=loss_types, converter=canonical_loss_type)
    K: int = option(65536, "queue length (number of stored negative keys; it starts empty, negatives are real keys "
                           "only)", low=0)
    dim: int = option(128, "output width of the projection (and prediction) MLP", low=1)
    m: float = option(0.996, "momentum of the target (lagging) network's EMA, in [0, 1]", low=0, high=1)
    T: float = option(0.2, "softmax temperature of the contrastive losses", low=0, low_open=True)
    use_negative_examples_from_batch: bool = option(False, "other samples of the batch are negatives")
    use_negative_examples_from_queue: bool = option(True, "the queue of past keys supplies negatives")
    use_both_augmentations_as_queries: bool = option(False, "symmetric loss: every global view is also a query")
    use_lagging_model: bool = option(True, "targets come from an EMA copy of encoder+projection (else the online "
                                           "net)")
    use_target_stop_gradient: bool = option(False, "without a lagging model: no gradient through the targets "
                                                   "(SimSiam)")
    use_momentum_schedule: bool = option(False, "cosine schedule of the EMA momentum from m to 1 over all optimizer "
                                                "steps")
    use_unit_sphere_projection: bool = option(True, "L2-normalize queries and keys before the loss")
    loss_constant_factor: float = option(1, "multiplier of the total loss (BYOL uses 2)")
    view_pair_reduction: str = option("sum", "combine the (query view, key view) losses by 'sum' (BYOL) or 'mean' "
                                             "(SimCLR)", choices=VIEW_PAIR_REDUCTIONS)


@attrs.frozen(kw_only=True, slots=False)
class LongRunOptions:
    """Long runs"""

    collapse_std_fraction: float = option(0.1, "collapse warning when step_embedding_std stays below this fraction "
                                               "of 1/sqrt(projection width)...", low=0)
    collapse_patience_steps: int = option(100, "... for this many consecutive steps (0 as the fraction: off)", low=1)


@attrs.frozen(kw_only=True, slots=False)
class OnlineProbeOptions:
    """Online linear probe"""

    online_linear_probe: bool = option(False, "train a linear classifier on the detached, standardized encoder "
                                              "features of the first view in every step, by its own SGD (the "
                                              "encoder trains exactly as without it); logs online_linear_acc "
                                              "(validation) and step_online_linear_acc (training batches); needs "
                                              "labels (images labelled -1 are left out)")
    online_linear_lr: float = option(0.1, "learning rate of the online linear probe's SGD (momentum 0.9, no weight "
                                          "decay, constant: the probe follows the features as they change)", low=0,
                                     low_open=True)


# attrs puts the fields of the last base first: the groups are listed last to first.
@attrs.frozen(kw_only=True, slots=False)
class SharedParams(
    OnlineProbeOptions,
    LongRunOptions,
    DistributedOptions,
    OptimOptions,
    HeadOptions,
    PrototypeOptions,
    MethodOptions,
    ViewOptions,
    DataSourceOptions,
    EncoderOptions,
):
    """The fields of ModelParams that are not a method's own: every method may read them (the long-run and
    online-probe options are the training loop's), and its own fields come from its option group."""
