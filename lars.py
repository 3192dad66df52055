"""Public face: ``from lars import LARS`` (selfsup.optim.lars)."""

from selfsup.optim.lars import LARS

__all__ = ["LARS"]
