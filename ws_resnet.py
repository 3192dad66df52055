"""Public face: weight-standardized layers and ResNets (selfsup.nn.ws_resnet)."""

from selfsup.nn.ws_resnet import (
    WS_EPS,
    WSConv2d,
    WSLinear,
    standardize_weight,
    to_ws_conv2d,
    ws_resnet18,
    ws_resnet34,
    ws_resnet50,
    ws_resnet101,
    ws_resnet152,
)

__all__ = ["WS_EPS", "WSConv2d", "WSLinear", "standardize_weight", "to_ws_conv2d", "ws_resnet18", "ws_resnet34",
           "ws_resnet50", "ws_resnet101", "ws_resnet152"]
