"""Named recipes: a :class:`Preset` is the ModelParams fields that make a method, with the paper it follows; the
recipe fragments below are shared by several presets."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import attr


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class Preset:
    """A named recipe: the ModelParams fields that make a method, with the paper it follows.

    ``derive`` computes fields that follow others (MoCo v3's loss factor is 2T) from the caller's overrides.
    """

    name: str  # the public function name, e.g. "BYOLParams"
    key: str  # the command-line / PRESETS name, e.g. "byol"
    paper: str  # "BYOL, arXiv:2006.07733"
    summary: str  # one line for the preset table
    doc: str  # the docstring of the preset function
    fields: Mapping[str, Any] = attr.ib(factory=dict)
    derive: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None

    def resolve(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The preset's fields with ``overrides`` on top."""
        derived = self.derive(overrides) if self.derive is not None else {}
        return {**self.fields, **derived, **overrides}


# Recipe fragments several presets share.
LARS_WITHOUT_BIAS_AND_NORM: Dict[str, Any] = dict(optimizer_name="lars", exclude_bias_and_norm_from_lars=True)
NO_NEGATIVES: Dict[str, Any] = dict(use_negative_examples_from_queue=False, use_negative_examples_from_batch=False)
BYOL_VIEWS: Dict[str, Any] = dict(transform_type="byol", global_crop_scale=(0.08, 1.0))
# The ViT recipe of DINO, MoCo v3, MAE and I-JEPA: AdamW, no weight decay on biases, norms, position embeddings and
# class/mask tokens.
ADAMW_VIT: Dict[str, Any] = dict(optimizer_name="adamw", exclude_bias_and_norm_from_lars=True)
