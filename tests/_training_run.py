"""Worker: one tiny training run in a workdir (fresh or --resume), printing each batch as it starts.

Usage: python _training_run.py WORKDIR [--resume] [--kill-in-save STEP] [--table ROWS]

--kill-in-save STEP kills this process with SIGKILL halfway through writing checkpoint STEP (after the
state is written, while the data position is being written).
Writes WORKDIR/final_params.npz when the run completes.
--table ROWS runs the comma-separated registry methods as a table of the tiny benchmark through
experiments.pipeline.run_benchmark instead (2 epochs of 6 steps per row; exits as the command would).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from orbax.checkpoint._src.handlers import json_checkpoint_handler  # noqa: E402

from _training_common import flat_params, make_data, run  # noqa: E402
from orthojax.training import Checkpointer  # noqa: E402

TRAIN, TEST = make_data(64), make_data(13, seed=1)
SETTINGS = dict(num_epochs=3, checkpoint_every=2, keep_checkpoints=3, log_every=2, dropout=0.3, use_bn=True)


def kill_while_saving(step_to_kill: int) -> None:
    """Patches the checkpoint writer so that saving ``step_to_kill`` dies halfway."""
    current = {"step": None}
    original_save = Checkpointer.save
    original_json = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    def save(self, step, state, position):
        current["step"] = step
        return original_save(self, step, state, position)

    async def json_save(self, item, directory):
        if current["step"] == step_to_kill:
            (directory / "partial").write_text(str(item)[:64])
            print(f"killed while saving {step_to_kill} in {directory}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return await original_json(self, item, directory)

    Checkpointer.save = save
    json_checkpoint_handler.JsonCheckpointHandler._save_fn = json_save


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-in-save", type=int, default=None)
    parser.add_argument("--table", default=None)
    args = parser.parse_args()
    if args.table is not None:
        return run_table(args)
    if args.kill_in_save is not None:
        kill_while_saving(args.kill_in_save)

    def announce(epoch, step, batch):
        print(f"batch {epoch} {step}", flush=True)
        time.sleep(0.02)
        return batch

    result = run(args.workdir, train=TRAIN, test=TEST, resume=args.resume, on_batch=announce, **SETTINGS)
    np.savez(os.path.join(args.workdir, "final_params.npz"), **flat_params(result.state))
    print(f"done {result.history.status} {len(result.history.train)}", flush=True)


def run_table(args) -> None:
    from _training_common import run_tiny_table, tiny_benchmark

    def announce(batch, rng):
        print(f"batch {len(batch['image'])}", flush=True)
        time.sleep(0.05)
        return batch

    run_tiny_table(args.workdir, args.table.split(","), bench=tiny_benchmark(augment=announce), epochs=2,
                   resume=args.resume)
    print("done table", flush=True)


if __name__ == "__main__":
    main()
