"""Optimizer parameter groups: which parameters get LARS scaling and weight decay, and which keep a constant
learning rate."""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Dict, List, Sequence, Tuple

from torch import nn

from selfsup.nn.batchrenorm import BatchRenorm1d

# Modules whose parameters are "normalization parameters" for LARS / weight-decay exclusion.
NORM_LAYER_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, BatchRenorm1d)


def parameter_groups(
    module: nn.Module,
    weight_decay: float,
    exclude_name_substrings: Sequence[str],
    exclude_bias_and_norm: bool,
    constant_lr_modules: Sequence[nn.Module] = (),
    separate_modules: Sequence[nn.Module] = (),
) -> List[Dict[str, Any]]:
    """Optimizer groups: "regular" (LARS scaling, weight decay) and "excluded" (neither), each split off again for
    parameters of ``constant_lr_modules`` (flag ``constant_lr``: the learning-rate schedule leaves them alone). The
    parameters of ``separate_modules`` (trained by an optimizer of their own: the online linear probe) are in none.

    A parameter is excluded when its name contains one of ``exclude_name_substrings`` or, with
    ``exclude_bias_and_norm``, when it is a bias, belongs to a normalization layer (chosen by module type, so
    downsample and MLP norm layers are caught too) or is named by its module's ``no_weight_decay()`` (timm's ViTs:
    position embeddings, class and register tokens; MAE's mask token). A substring that matches no parameter warns
    (parameter names change with a module's layout). Frozen parameters (the EMA target) are left out, and so are
    empty groups.
    """
    constant_ids = {id(p) for m in constant_lr_modules for p in m.parameters()}
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {
        key: [] for key in itertools.product((False, True), (False, True))
    }
    separate_ids = {id(p) for m in separate_modules for p in m.parameters()}
    named = [entry for entry in named_parameters_with_owner(module) if id(entry[1]) not in separate_ids]
    tokens = no_weight_decay_names(module)
    for name, parameter, owner in named:
        by_name = any(sub in name for sub in exclude_name_substrings)
        by_type = exclude_bias_and_norm and (is_bias_or_norm(name, owner) or name in tokens)
        groups[(by_name or by_type, id(parameter) in constant_ids)].append(parameter)
    for sub in exclude_name_substrings:
        if not any(sub in name for name, _, _ in named):
            examples = ", ".join(name for name, _, _ in named[:3])
            warnings.warn(f"exclude_matching_parameters_from_lars: {sub!r} is in no parameter name (they read like "
                          f"{examples}, ...), so it excludes nothing", UserWarning, stacklevel=2)
    return [
        {
            "name": ("excluded" if excluded else "regular") + (" constant lr" if constant else ""),
            "params": params,
            "weight_decay": 0.0 if excluded else weight_decay,
            "use_lars": not excluded,
            "constant_lr": constant,
        }
        for (excluded, constant), params in groups.items()
        if params
    ]


def is_bias_or_norm(name: str, owner: nn.Module) -> bool:
    """Biases and normalization-layer parameters, selected by module type (not by name substrings)."""
    return name.endswith("bias") or isinstance(owner, NORM_LAYER_TYPES)


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Qualified names of the parameters that the submodules of ``module`` list in their ``no_weight_decay()`` (the
    convention of timm's models)."""
    names: set[str] = set()
    for prefix, owner in module.named_modules():
        listed = getattr(owner, "no_weight_decay", None)
        if callable(listed):
            names.update(f"{prefix}.{name}" if prefix else name for name in listed())
    return names


def named_parameters_with_owner(module: nn.Module) -> list[Tuple[str, nn.Parameter, nn.Module]]:
    """(qualified name, parameter, owning module) for every trainable parameter, each parameter once."""
    seen: set[int] = set()
    out = []
    for module_name, owner in module.named_modules():
        for param_name, parameter in owner.named_parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                out.append((f"{module_name}.{param_name}" if module_name else param_name, parameter, owner))
    return out
