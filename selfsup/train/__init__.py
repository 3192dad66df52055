"""Pretraining: the LightningModule (``module``), its data pipeline (``pipeline``), and what keeps long runs alive:
atomic checkpoint files (``checkpoints``), exact resume (``resume``), the non-finite loss guard and collapse monitor
(``health``), images per second (``progress``)."""
