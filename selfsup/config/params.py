""":class:`ModelParams`, the one flat params class of a pretraining run: the fields every method shares
(``methods.options.SharedParams``), the option group of every registered method, and the long-run options.

Each field is declared once, with its help text and its allowed values or range (``selfsup.options.option``), in the
module whose code reads it; the validation, the command line and docs/options.md all read that declaration. A new
method file's option group joins ModelParams by itself: nothing here names a method.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import attr
import attrs

from selfsup import methods
from selfsup.config.validation import validate_params
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams
from selfsup.methods.preset import Preset
from selfsup.options import build_attrs, option


@attrs.frozen(kw_only=True, slots=False)
class LongRunOptions:
    """Long runs"""

    collapse_std_fraction: float = option(0.1, "collapse warning when step_embedding_std stays below this fraction "
                                               "of 1/sqrt(projection width)...", low=0)
    collapse_patience_steps: int = option(100, "... for this many consecutive steps (0 as the fraction: off)", low=1)


def _method_groups() -> Tuple[type, ...]:
    """The registered methods' option groups, last to first (attrs puts the fields of the last base first), after
    checking that no two declare the same field."""
    owners: Dict[str, str] = {field.name: "SharedParams" for field in attr.fields(SharedParams)}
    owners.update({field.name: "LongRunOptions" for field in attr.fields(LongRunOptions)})
    groups = methods.option_groups()
    for group in groups:
        for field in attr.fields(group):
            if field.name in owners:
                raise TypeError(f"{group.__name__}.{field.name} is declared by {owners[field.name]} too")
            owners[field.name] = group.__name__
    return tuple(reversed(groups))


@attrs.frozen(kw_only=True, slots=False)
class ModelParams(LongRunOptions, *_method_groups(), SharedParams):  # type: ignore[misc]
    """All knobs of :class:`selfsup.train.SelfSupervisedMethod`. The defaults are MoCo v2 with a ResNet-18 on STL-10.

    Validation runs at construction, before any data or model is touched: impossible settings raise ``ValueError``
    naming the field, suspicious but legal ones warn (config.validation). Ablations use ``attr.evolve(params,
    field=value)``, which validates again.
    """

    def __attrs_post_init__(self) -> None:
        validate_params(self)

    @property
    def method(self) -> Method:
        """The registered method of ``loss_type``."""
        return methods.method_of(self.loss_type)

    @property
    def uses_queue(self) -> bool:
        """Whether a queue of past keys is kept: negatives of a contrastive loss, or NNCLR's support set."""
        return self.method.uses_queue(self)


def make_params(params: Optional[Mapping[str, Any] | ModelParams] = None, **overrides: Any) -> ModelParams:
    """Build validated params from a ``ModelParams``, a dict of fields, or keywords; unknown names raise."""
    return build_attrs(ModelParams, params, **overrides)


PresetFunction = Callable[..., ModelParams]


def preset_function(spec: Preset) -> PresetFunction:
    """The public function of the recipe ``spec`` (selfsup.config.presets): its fields, with the caller's overrides
    on top, validated."""

    def make(**overrides: Any) -> ModelParams:
        return make_params(spec.resolve(overrides))

    make.__name__ = make.__qualname__ = spec.name
    make.__module__ = "selfsup.config.presets"
    fields = ", ".join(f"{k}={v!r}" for k, v in spec.fields.items())
    make.__doc__ = spec.doc + (f"\n\nFields set: {fields}" if fields else "")
    return make
