"""Aggregators: pure, jittable functions of a Jacobian, usable without the orthojax engine.

Every aggregator factory validates its hyper-parameters and returns ``aggregate(jacobian, state=None, *,
key=None) -> (direction, state)``, where ``jacobian`` is a (T, P) array or a pytree whose leaves have a
leading task axis T, and ``direction`` has the structure of one task's gradient (the task axis removed).
"""

from orthojax.aggregators.gramian import combine, gramian

__all__ = ["combine", "gramian"]
