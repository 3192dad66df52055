"""Networks: encoders (``backbones``), projection/prediction heads (``heads``), the target network and its EMA
(``target``), the key queue (``queue``), Batch Renormalization and weight-standardized ResNets."""

from selfsup.nn.backbones import (
           HiddenLayerEncoder,
           encoder_archs,
           encoder_output_dim,
           get_encoder,
           use_channels_last,
           with_representation,
)
from selfsup.nn.batchrenorm import BatchRenorm1d
from selfsup.nn.heads import MLP, PrototypeLayer, mlp_normalization
from selfsup.nn.queue import Queue
from selfsup.nn.target import MomentumSchedule, MomentumTarget, OnlineTarget, ema_update_, encode_views

__all__ = ["BatchRenorm1d", "HiddenLayerEncoder", "MLP", "MomentumSchedule", "MomentumTarget", "OnlineTarget",
           "PrototypeLayer", "Queue", "ema_update_", "encode_views", "encoder_archs", "encoder_output_dim",
           "get_encoder", "mlp_normalization", "use_channels_last", "with_representation"]
