"""Evaluation of a representation: probes on frozen embeddings (``probes``: kNN, logistic regression), the linear
probe (``linear``) and fine-tuning (``finetune``) of a pretraining checkpoint's encoder (both ``classifier``s), the
suite that runs every protocol on several checkpoints (``suite``), the online probe trained during pretraining
(``online``) and the embedding pictures (``visualize``)."""
