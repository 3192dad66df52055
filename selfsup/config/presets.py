"""Named presets: each is a function returning a validated :class:`ModelParams` with a method's recipe set,
accepting overrides (``BYOLParams(batch_size=128)``). The recipes live in the method files; each line below makes
one public and registers it in :data:`PRESETS` under its command-line name."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

from selfsup.config.fields import ModelParams
from selfsup.config.options import build_attrs
from selfsup.methods.base import Preset, preset_specs

PresetFunction = Callable[..., ModelParams]
PRESETS: Dict[str, PresetFunction] = {}  # command-line name -> preset function
PRESET_SPECS: Dict[str, Preset] = {}  # command-line name -> its recipe and description


def make_params(params: Optional[Mapping[str, Any] | ModelParams] = None, **overrides: Any) -> ModelParams:
    """Build validated params from a ``ModelParams``, a dict of fields, or keywords; unknown names raise."""
    return build_attrs(ModelParams, params, **overrides)


def preset(key: str) -> PresetFunction:
    """The public preset function of the method recipe registered as ``key``, registered in PRESETS."""
    spec = preset_specs()[key]

    def make(**overrides: Any) -> ModelParams:
        return make_params(spec.resolve(overrides))

    make.__name__ = make.__qualname__ = spec.name
    fields = ", ".join(f"{k}={v!r}" for k, v in spec.fields.items())
    make.__doc__ = spec.doc + (f"\n\nFields set: {fields}" if fields else "")
    PRESETS[spec.key] = make
    PRESET_SPECS[spec.key] = spec
    return make


MoCoV2Params = preset("moco_v2")
MoCoParams = preset("moco")
MoCoV3Params = preset("moco_v3")
SimCLRParams = preset("simclr")
SimCLRv2Params = preset("simclr_v2")
EqCoParams = preset("eqco")
BYOLParams = preset("byol")
SimSiamParams = preset("simsiam")
BarlowTwinsParams = preset("barlow_twins")
VICRegParams = preset("vicreg")
DINOParams = preset("dino")
SwAVParams = preset("swav")
SupConParams = preset("supcon")
NNCLRParams = preset("nnclr")
WMSEParams = preset("wmse")

__all__ = ["PRESETS", "PRESET_SPECS", "PresetFunction", "make_params", "preset",
           *(f.__name__ for f in PRESETS.values())]
