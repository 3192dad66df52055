"""Evaluation of a representation: probes on frozen embeddings (``probes``: kNN, logistic regression) and the linear
probe of a pretraining checkpoint (``linear``)."""
