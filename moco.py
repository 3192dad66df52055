"""Public face: ``from moco import SelfSupervisedMethod`` (the code lives in selfsup.train.module)."""

from selfsup.train.module import SelfSupervisedMethod

__all__ = ["SelfSupervisedMethod"]
