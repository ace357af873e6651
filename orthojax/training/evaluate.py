"""The evaluation step: the model in inference mode feeding a jittable metrics accumulator.

The accumulator sums sufficient statistics (e.g. confusion matrices) over every test example, so the
finalized metrics are exact, independent of the batch size and of the number of devices.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn

from orthojax.methods.base import Method
from orthojax.training.state import TrainState, model_variables

PyTree = Any
Batch = Mapping[str, Any]

__all__ = ["EvalMetrics", "make_eval_step"]


class EvalMetrics(NamedTuple):
    """A metrics accumulator.

    Attributes:
      init: ``() -> acc`` (a pytree of arrays).
      update: ``(acc, outputs: tuple, batch) -> acc``, pure and jittable.
      finalize: ``acc -> dict`` of floats / lists (host side).
    """

    init: Callable[[], PyTree]
    update: Callable[[PyTree, tuple, Batch], PyTree]
    finalize: Callable[[PyTree], dict]


def make_eval_step(
    model: nn.Module, metrics: EvalMetrics, *, input_key: str = "image", method: Optional[Method] = None
) -> Callable[[TrainState, PyTree, Batch], PyTree]:
    """Builds ``eval_step(state, acc, batch) -> acc`` (pure; the model runs with ``train=False``).

    The outputs come from ``method.evaluate(model, variables, state.method_state, inputs)`` when the method
    defines it (e.g. RotoGrad's heads decode the rotated representations they were trained on), else from
    ``model.apply(variables, inputs, train=False)``. Vmapped over seeds, ``state.method_state`` carries
    the seed axis like the parameters.

    Args:
      model: Flax module returning a tuple of T outputs.
      metrics: the accumulator.
      input_key: the batch entry fed to the model.
      method: the method the model was trained with (None: the plain forward pass).
    """
    evaluate = None if method is None else method.evaluate

    def eval_step(state: TrainState, acc: PyTree, batch: Batch) -> PyTree:
        variables = model_variables(state.params, state.batch_stats)
        if evaluate is not None:
            outputs = evaluate(model, variables, state.method_state, batch[input_key])
        else:
            outputs = model.apply(variables, batch[input_key], train=False)
        return metrics.update(acc, tuple(outputs), batch)

    return eval_step
