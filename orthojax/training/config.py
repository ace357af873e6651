"""The loop's settings (:class:`TrainConfig`), what a run returns (:class:`TrainResult`), and which
settings a resumed run may change (:data:`RESUMABLE_CHANGES`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional

from orthojax.training.history import History
from orthojax.training.state import TrainState

__all__ = ["RESUMABLE_CHANGES", "TrainConfig", "TrainResult", "config_record"]

RESUMABLE_CHANGES = ("train.progress", "train.tensorboard", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.async_checkpoint", "train.resume", "train.max_steps")
"""The settings (in ``config.json``'s names) that a resumed run may change: they change neither the
trained parameters nor the logged metrics. ``max_steps`` may not go below the step the run reached."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to run the loop (the experiment's own settings go to ``run_config``).

    Attributes:
      num_epochs: epochs to train.
      seed: base seed (initialisation and dropout keys; the data order is the data factory's business).
      num_seeds: S > 1 trains seeds ``seed .. seed + S - 1`` in one program (``jax.vmap``).
      log_every: steps between host synchronisations (metrics are still recorded for every step).
      checkpoint_every: also checkpoint every this many steps (0: only at epoch ends and the end).
      keep_checkpoints: how many checkpoints to keep.
      async_checkpoint: write checkpoints in the background.
      resume: continue from the latest checkpoint in the workdir (a workdir with checkpoints and
        ``resume=False`` is an error).
      max_nonfinite: stop after this many consecutive non-finite steps (0: never).
      eval_every: evaluate every this many epochs (0: never); the last epoch is always evaluated.
      cosine: record the last shared layer's (T, T) cosine matrix for every method.
      cosine_every: methods that do not compute those cosines themselves pay one extra Jacobian for
        them; compute it only every this many steps (NaN on the others; see
        :func:`orthojax.training.make_train_step`). 1: every step, the paper's protocol.
      progress: show a tqdm progress bar and the epoch summaries.
      tensorboard: write TensorBoard event files.
      max_steps: stop after this many steps in total, >= 1 (None: ``num_epochs`` full epochs).

    Raises:
      ValueError: a count below its minimum (named with its value).
    """

    num_epochs: int = 1
    seed: int = 0
    num_seeds: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    async_checkpoint: bool = False
    resume: bool = False
    max_nonfinite: int = 20
    eval_every: int = 1
    cosine: bool = True
    cosine_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    max_steps: Optional[int] = None

    def __post_init__(self):
        for name in ("num_epochs", "num_seeds", "log_every", "keep_checkpoints", "cosine_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1; got {getattr(self, name)}")
        for name in ("checkpoint_every", "max_nonfinite", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0; got {getattr(self, name)}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be >= 1 or None; got {self.max_steps}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """The steps this run takes: ``num_epochs`` epochs, at most ``max_steps``."""
        total = self.num_epochs * steps_per_epoch
        return total if self.max_steps is None else min(total, self.max_steps)


class TrainResult(NamedTuple):
    """What :func:`orthojax.training.train_and_evaluate` returns: the final train state and the run's
    history (rebuilt from ``metrics.jsonl`` on resume, so it covers the whole run)."""

    state: TrainState
    history: History


def config_record(config: TrainConfig, run_config: Optional[Mapping[str, Any]]) -> dict:
    """What ``config.json`` holds: ``{"train": <config's fields>, **run_config}``."""
    return {"train": dataclasses.asdict(config), **dict(run_config or {})}
