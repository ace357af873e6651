"""Runnable experiments: ``python -m experiments.multidigit_mnist``, ``.nyuv2``, ``.sunrgbd``."""
