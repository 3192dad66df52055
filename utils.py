"""Public face: the model building blocks of the original ``utils`` (selfsup.nn, selfsup.eval.probes)."""

from selfsup.eval.probes import topk_accuracy
from selfsup.nn.backbones import (
           HiddenLayerEncoder,
           encoder_output_dim,
           get_encoder,
           use_channels_last,
           with_representation,
)
from selfsup.nn.heads import ACTIVATIONS, MLP, PrototypeLayer, mlp_normalization

__all__ = ["ACTIVATIONS", "HiddenLayerEncoder", "MLP", "PrototypeLayer", "encoder_output_dim", "get_encoder",
           "mlp_normalization", "topk_accuracy", "use_channels_last", "with_representation"]
