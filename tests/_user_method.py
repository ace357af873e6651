"""A method defined outside orthojax, as a user writes one: run by reference, ``tests._user_method:my_method``."""

from __future__ import annotations

from orthojax.methods.base import Method
from orthojax.methods.scalarization import weighted_sum


def my_method(first_weight: float = 2.0) -> Method:
    """A fixed weighting of two tasks: minimises first_weight * L_0 + L_1.

    Args:
      first_weight: the weight of the first task's loss, > 0.
    """
    if not first_weight > 0:
        raise ValueError(f"my_method: first_weight must be > 0; got {first_weight}")
    return weighted_sum((first_weight, 1.0), name="my_method")
