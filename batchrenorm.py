"""Public face: ``from batchrenorm import BatchRenorm1d`` (selfsup.nn.batchrenorm)."""

from selfsup.nn.batchrenorm import BatchRenorm1d, d_max, r_max

__all__ = ["BatchRenorm1d", "d_max", "r_max"]
