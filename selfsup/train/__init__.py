"""Pretraining: the LightningModule (``module``), its data pipeline (``pipeline``) and what keeps long runs alive
(``longrun``: atomic checkpoints, exact resume, non-finite loss guard, collapse monitor)."""
