"""Multi-stage protocols: a method that needs more than one training run says how to run them.

Most methods train once. Some are protocols over several runs: single-task learning trains one network
per task; Recon trains, scores the shared layers by their gradient conflicts, turns the worst ones
task-specific and retrains. Such a method registers a :class:`MultiStage` (``register(...,
protocol=...)``): ``plan`` lists the runs it will ask for, so that every run is checked before any trains,
and ``run`` drives them through a :class:`Stages` (implemented by whatever trains: the experiments' runner,
or a test's fake) and returns an :class:`Outcome` (which run's evaluation is the table row).

A protocol never trains a network itself and names no dataset: it asks ``stages.train(stage, method,
hyperparameters, ...)`` and reads the :class:`StageResult`.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["MultiStage", "Outcome", "PlannedStage", "StageResult", "Stages"]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class StageResult(NamedTuple):
    """What one finished stage (a training run, over S seeds) gives back.

    Attributes:
      workdir: the run's directory.
      evaluations: per seed (S entries), the final evaluation (a flat dict), or None when there is none.
      metric: ``fn(name) -> np.ndarray`` of shape (S, steps, ...): a per-step training metric of the run
        (e.g. Recon's "layer_cosines" (S, steps, L, T, T)).
      status: "completed", or how the run ended ("nonfinite", ...).
    """

    workdir: str
    evaluations: tuple
    metric: Callable[[str], np.ndarray]
    status: str = "completed"


@runtime_checkable
class Stages(Protocol):
    """The trainer a protocol drives (one table row, one group of seeds).

    Attributes:
      num_tasks: T.
      num_seeds: S, the seeds every stage trains (each :class:`StageResult` has S entries).
    """

    num_tasks: int
    num_seeds: int

    def shared_layer_names(self, model_kwargs: Mapping[str, Any] = _EMPTY) -> tuple:
        """The shared layer paths of the row's model (with ``model_kwargs`` added), architectural order."""
        ...

    def train(self, stage: str, method: str, hyperparameters: Mapping[str, Any], *,
              model_kwargs: Mapping[str, Any] = _EMPTY, epochs: Optional[int] = None) -> StageResult:
        """Trains the row's model (its options updated with ``model_kwargs``) with ``method`` built from
        ``hyperparameters`` (completed from the run's context), for ``epochs`` (None: the table's); the
        stage ``stage`` names the run (and its workdir) within the row."""
        ...

    def write_json(self, name: str, obj: Any) -> str:
        """Writes ``obj`` as ``<row workdir>/<name>``; returns the path."""
        ...


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    """A stage as planned before anything trains (for checking the whole table first).

    Attributes:
      stage: the stage name (the run's workdir within the row).
      method: the method it trains.
      hyperparameters: the method's hyper-parameters (before the run's context completes them).
      model_kwargs: options added to the row's model.
      epochs: its number of epochs (None: the table's).
      settled: False when the stage's model options or hyper-parameters depend on earlier stages (then
        only its method and hyper-parameters are checked in advance, its saved settings when it starts).
    """

    stage: str
    method: str
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: Optional[int] = None
    settled: bool = True


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a protocol's runs add up to, as one table row.

    Exactly one of ``stage`` and ``task_stages`` is set.

    Attributes:
      stage: the stage whose evaluation (and training diagnostics) is the row's.
      task_stages: T stage names: task t's columns come from stage t (single-task learning).
      extra: per-seed fields added to the row's results, name -> S values (e.g. Recon's
        {"recon_layers": [[...], ...]}).
    """

    stage: Optional[str] = None
    task_stages: Optional[tuple] = None
    extra: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if (self.stage is None) == (self.task_stages is None):
            raise ValueError(f"Outcome: give exactly one of stage and task_stages; got stage={self.stage!r}, "
                             f"task_stages={self.task_stages!r}")


class MultiStage(NamedTuple):
    """A multi-stage protocol.

    Attributes:
      plan: ``fn(stages, hyperparameters) -> sequence of PlannedStage``: the runs ``run`` will ask for,
        without training (it may call ``stages.shared_layer_names`` and read ``stages.num_tasks``).
      run: ``fn(stages, hyperparameters) -> Outcome``: trains the stages and says which make the row.

    ``hyperparameters`` are the method's, as the user gave them (completed from the run's context, not
    with its defaults).
    """

    plan: Callable[[Stages, Mapping[str, Any]], Sequence[PlannedStage]]
    run: Callable[[Stages, Mapping[str, Any]], Outcome]
