"""When the loop does what: small pure functions of the step count.

Steps are counted as completed steps: after the first train step, ``step == 1``. Step ``s`` (0-based,
before it runs) trains on batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = ["DataPosition", "data_position", "is_epoch_end", "is_time", "should_evaluate"]


class DataPosition(NamedTuple):
    """Where the data stream stands after ``step`` completed steps: the next batch is batch
    ``position`` of epoch ``epoch``."""

    step: int
    epoch: int
    position: int


def data_position(step: int, steps_per_epoch: int) -> DataPosition:
    """The data position after ``step`` completed steps: ``(step, step // spe, step % spe)``.

    Raises:
      ValueError: ``step`` < 0 or ``steps_per_epoch`` < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    return DataPosition(step, step // steps_per_epoch, step % steps_per_epoch)


def is_time(step: int, every: int, total: Optional[int] = None) -> bool:
    """Whether something done "every ``every`` steps" is due after ``step`` completed steps: ``step`` is
    a positive multiple of ``every`` (``every`` = 0: never), or the last step ``total``."""
    if step <= 0:
        return False
    return bool(every and step % every == 0) or (total is not None and step == total)


def is_epoch_end(step: int, steps_per_epoch: int) -> bool:
    """Whether ``step`` completed steps end an epoch."""
    return is_time(step, steps_per_epoch)


def should_evaluate(epoch: int, *, eval_every: int, num_epochs: int, last: bool = False) -> bool:
    """Whether the summary of (0-based) ``epoch`` includes an evaluation: every ``eval_every`` epochs
    (0: never), the run's last epoch ``num_epochs - 1``, and the epoch a run stops in (``last``: e.g.
    stopped by ``max_steps``), whenever ``eval_every`` > 0."""
    if not eval_every:
        return False
    return (epoch + 1) % eval_every == 0 or epoch == num_epochs - 1 or last
