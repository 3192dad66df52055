"""What ModelParams does beyond holding its fields, kept out of config/params.py (whose generated stub type checkers
read instead of the module) so that it is type-checked: validation when the params are built, the method the params
select, and whether it keeps a queue."""

from __future__ import annotations

from selfsup import methods
from selfsup.config.validation import validate_params
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams


class ModelParamsBase:
    """The behaviour of ModelParams (an attrs class that inherits it after its option groups)."""

    def __attrs_post_init__(self) -> None:
        assert isinstance(self, SharedParams)
        validate_params(self)

    @property
    def method(self) -> Method:
        """The registered method of ``loss_type``."""
        assert isinstance(self, SharedParams)
        return methods.method_of(self.loss_type)

    @property
    def uses_queue(self) -> bool:
        """Whether a queue of past keys is kept: negatives of a contrastive loss, or NNCLR's support set."""
        assert isinstance(self, SharedParams)
        return self.method.uses_queue(self)
