"""Public face: ``python train.py --preset byol ...``, the pretraining command line (selfsup.cli.train, also
installed as ``selfsup-train``)."""

from selfsup.cli.train import main

if __name__ == "__main__":
    main()
