"""Public face: ``from linear_classifier import LinearClassifierMethod`` (selfsup.eval.linear); run as a script it is
the probe's command line (selfsup.cli.linear, also installed as ``selfsup-linear``)."""

from selfsup.eval.classifier import CHECKPOINT_FIELDS, read_checkpoint
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams, make_linear_params

__all__ = ["CHECKPOINT_FIELDS", "LinearClassifierMethod", "LinearClassifierMethodParams", "make_linear_params",
           "read_checkpoint"]

if __name__ == "__main__":
    from selfsup.cli.linear import main

    main()
