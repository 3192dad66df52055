"""Networks: encoders and their options (``backbones``), projection/prediction heads, prototypes and their options
(``heads``), the target network and its EMA (``target``), what a method remembers across steps (``memory``), Batch
Renormalization and weight-standardized ResNets."""

from selfsup.nn.backbones import (
    EncoderOptions,
    HiddenLayerEncoder,
    check_encoder_options,
    encoder_archs,
    encoder_output_dim,
    get_encoder,
    make_encoder,
    use_channels_last,
    with_representation,
)
from selfsup.nn.batchrenorm import BatchRenorm1d
from selfsup.nn.heads import MLP, HeadOptions, PrototypeLayer, PrototypeOptions, Prototypes, mlp_normalization
from selfsup.nn.memory import Memory
from selfsup.nn.target import MomentumSchedule, MomentumTarget, OnlineTarget, ema_update_, encode_views

__all__ = ["BatchRenorm1d", "EncoderOptions", "HeadOptions", "HiddenLayerEncoder", "MLP", "Memory", "MomentumSchedule",
           "MomentumTarget", "OnlineTarget", "PrototypeLayer", "PrototypeOptions", "Prototypes",
           "check_encoder_options", "ema_update_", "encode_views", "encoder_archs", "encoder_output_dim",
           "get_encoder", "make_encoder", "mlp_normalization", "use_channels_last", "with_representation"]
