"""The training engine: train state, the compiled step, data parallelism, checkpoints, logging.

A typical experiment::

    from orthojax import training
    result = training.train_and_evaluate(
        training.TrainConfig(num_epochs=10, checkpoint_every=500, resume=args.resume),
        workdir,
        model=model, task_losses=task_losses, method=get_method("cosreg", alpha=0.1),
        optimizer=optax.adam(1e-3), last_shared="encoder/conv2",
        train_batches=lambda epoch, start: iterate_batches(train, 64, seed, epoch, start_step=start,
            process_index=jax.process_index(), process_count=jax.process_count()),
        steps_per_epoch=steps_per_epoch(len_train, 64), sample_batch=first_batch,
        eval_batches=..., eval_metrics=training.EvalMetrics(init, update, finalize),
    )
"""

from orthojax.training.checkpoint import (
    MANIFEST,
    Checkpointer,
    Restored,
    abstract_like,
    checkpoint_steps,
    verify_checkpoint,
)
from orthojax.training.errors import (
    CheckpointError,
    CheckpointsMissingError,
    ConfigChangedError,
    HistoryMissingError,
    RunExistsError,
    WorkdirError,
    WorkdirLocked,
)
from orthojax.training.evaluate import EvalMetrics, make_eval_step
from orthojax.training.guard import NonFiniteError, all_finite, check_streak, keep_if_finite
from orthojax.training.history import History, epoch_means
from orthojax.training.logging import (
    MetricWriter,
    config_changes,
    epoch_summary,
    read_config,
    scan_metrics,
    to_jsonable,
    write_config,
)
from orthojax.training.loop import (
    RESUMABLE_CHANGES,
    Evaluation,
    StopRequest,
    TrainConfig,
    TrainResult,
    check_workdir,
    evaluate_checkpoint,
    stop_requested,
    train_and_evaluate,
)
from orthojax.training.seeds import run_keys, vmap_eval_step, vmap_init, vmap_train_step
from orthojax.training.sharding import (
    DATA_AXIS,
    batch_sharding,
    check_batch_size,
    compile_train_step,
    init_sharded,
    initialize_distributed,
    make_mesh,
    replicated,
    run_once,
    shard_batch,
)
from orthojax.training.state import TrainState, init_train_state, model_variables, num_model_tasks, step_key
from orthojax.training.step import make_problem, make_train_step
from orthojax.training.workdir import LOCK_FILE, WorkdirLock

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "CheckpointsMissingError",
    "ConfigChangedError",
    "DATA_AXIS",
    "EvalMetrics",
    "Evaluation",
    "History",
    "HistoryMissingError",
    "LOCK_FILE",
    "MANIFEST",
    "MetricWriter",
    "NonFiniteError",
    "RESUMABLE_CHANGES",
    "Restored",
    "RunExistsError",
    "StopRequest",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "WorkdirError",
    "WorkdirLock",
    "WorkdirLocked",
    "abstract_like",
    "all_finite",
    "batch_sharding",
    "check_batch_size",
    "check_streak",
    "check_workdir",
    "checkpoint_steps",
    "compile_train_step",
    "config_changes",
    "epoch_means",
    "epoch_summary",
    "evaluate_checkpoint",
    "init_sharded",
    "init_train_state",
    "initialize_distributed",
    "keep_if_finite",
    "make_eval_step",
    "make_mesh",
    "make_problem",
    "make_train_step",
    "model_variables",
    "num_model_tasks",
    "read_config",
    "replicated",
    "run_once",
    "run_keys",
    "scan_metrics",
    "shard_batch",
    "step_key",
    "stop_requested",
    "to_jsonable",
    "train_and_evaluate",
    "vmap_eval_step",
    "vmap_init",
    "verify_checkpoint",
    "vmap_train_step",
    "write_config",
]
