""":class:`Method`: everything the library asks of a method, declared in the method's file and registered there
(``methods.registry.register``): its names, its option group, its presets, its checks, its step (for joint-embedding
methods: its heads' prototypes, its criterion, its memory), its short- and small-run recipes."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from selfsup.methods.criteria import PairwiseCriterion, view_pairs
from selfsup.methods.options import SharedParams
from selfsup.methods.preset import Preset
from selfsup.methods.steps import JointEmbeddingStep, StateDict, TrainingStep
from selfsup.nn.heads import Prototypes
from selfsup.nn.memory import Memory, check_length


class Method:
    """What one method knows. The defaults describe a joint-embedding method that reads no negatives, keeps no
    memory, adds no prototypes, checks or recipe of its own; a method file overrides what differs and implements
    :meth:`criterion` (or :meth:`step`, for a method of another shape).
    """

    loss_types: ClassVar[Tuple[str, ...]] = ()  # its loss_type values, one per loss of the family
    aliases: ClassVar[Mapping[str, str]] = {}  # older loss_type values -> their name in loss_types
    options: ClassVar[Optional[type]] = None  # the attrs option group of its own fields (ModelParams inherits it)
    presets: ClassVar[Tuple[Preset, ...]] = ()  # its named recipes
    reads_negatives: ClassVar[bool] = False  # the use_negative_examples_from_* flags matter
    batch_candidates: ClassVar[bool] = False  # compares each anchor with the batch whatever the flags (NNCLR, SupCon)
    momentum_target: ClassVar[Optional[bool]] = None  # True / False: defined with / without an EMA target
    min_views: ClassVar[int] = 2  # views per image the step compares (1: a masked-image method's single view)
    vit_only: ClassVar[bool] = False  # works on the patch tokens of a timm Vision Transformer
    # Fields added to the method later -> the value in effect before they existed, for checkpoints written without them
    legacy_defaults: ClassVar[Mapping[str, Any]] = {}

    def source(self) -> str:
        """The method's file, for messages."""
        return inspect.getsourcefile(type(self)) or type(self).__module__

    def missing(self) -> List[str]:
        """What the method lacks to be trained, in words (empty when it is complete)."""
        if type(self).criterion is Method.criterion and type(self).step is Method.step:
            return ["a step: implement criterion() (a joint-embedding method) or step() (any other shape)"]
        return []

    def check(self, p: SharedParams) -> None:
        """Raise (``options.fail``) or warn (``options.suspicious``) about settings of this method; called when it
        is the params' loss_type."""

    def check_options(self, p: SharedParams) -> None:
        """Checks of this method's own fields that apply whatever the loss_type; called for every method."""

    def uses_queue(self, p: SharedParams) -> bool:
        """Whether it keeps a queue of ``K`` past keys (MoCo's negatives, NNCLR's support set)."""
        return False

    def check_memory(self, p: SharedParams) -> None:
        """The rule of the memory :meth:`memory` builds: it holds whole batches (``K``, for the default queue)."""
        if self.uses_queue(p):
            check_length("ModelParams.K", p.K, p.batch_size)

    # --- the step ----------------------------------------------------------------------------------------------------
    def step(self, p: SharedParams, encoder: nn.Module) -> TrainingStep[Any]:
        """The training step of params ``p`` around ``encoder``: by default the joint-embedding step built from this
        method's :meth:`head_prototypes`, :meth:`criterion` and :meth:`memory`."""
        return JointEmbeddingStep(p, encoder, self)

    def head_prototypes(self, p: SharedParams) -> Optional[Prototypes]:
        """A prototype layer that ends the projection head (DINO), or None."""
        return None

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        """The step's loss for params ``p``, over the (query view, key view) ``pairs``."""
        raise NotImplementedError(f"{type(self).__name__} defines no criterion")

    def build_criterion(self, p: SharedParams) -> PairwiseCriterion:
        """:meth:`criterion` over the view pairs of the symmetry and multi-crop fields, combined by
        ``view_pair_reduction`` and scaled by ``loss_constant_factor``."""
        pairs = view_pairs(p.num_global_crops, p.num_local_crops, p.use_both_augmentations_as_queries)
        return self.criterion(p, pairs, p.view_pair_reduction, p.loss_constant_factor)

    def memory(self, p: SharedParams, pairs: Sequence[Tuple[int, int]]) -> Optional[Memory]:
        """What the step remembers: by default, with :meth:`uses_queue`, the last ``K`` keys of the first pair's key
        view (MoCo's queue), gathered from every process with ``gather_keys_for_queue``."""
        if not self.uses_queue(p):
            return None
        return Memory(p.dim, p.K, views=[pairs[0][1]], field="ModelParams.K", gather=p.gather_keys_for_queue,
                      gather_field="ModelParams.gather_keys_for_queue")

    def upgrade_legacy_state(self, state: StateDict, prefix: str) -> None:
        """Rename, in a checkpoint's ``state`` (keys under ``prefix``), what older versions of the method kept
        elsewhere."""

    def dry_run(self, p: SharedParams) -> None:
        """Build what the joint-embedding step reads from the params, on the meta device (no memory, no compute), so
        that a field the method reads but does not declare fails when the params are built. A method with its own
        :meth:`step` overrides this to build what that step reads."""
        if type(self).criterion is Method.criterion:
            return
        with torch.device("meta"):
            self.head_prototypes(p)
            criterion = self.build_criterion(p)
            self.memory(p, criterion.pairs)

    # --- recipes -----------------------------------------------------------------------------------------------------
    def short_run_overrides(self, p: SharedParams) -> Dict[str, Any]:
        """Field overrides of this method for runs shorter than its paper's schedules (config.recipes)."""
        return {}

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        """Field overrides of this method that shrink it for CPU tests (config.recipes)."""
        return {}

    def active(self, p: SharedParams) -> bool:
        """Whether params ``p`` select this method."""
        return p.loss_type in self.loss_types
