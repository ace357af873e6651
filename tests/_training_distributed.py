"""Worker: one of two processes on localhost (jax.distributed + gloo CPU collectives), each feeding its
half of every global batch to the tiny run; process 0 writes the final parameters.

Usage: python _training_distributed.py PROCESS_ID PORT WORKDIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)

import numpy as np  # noqa: E402

from _training_common import flat_params, make_data, run  # noqa: E402

SETTINGS = dict(num_epochs=1, checkpoint_every=2, dropout=0.3, use_bn=True)


def main() -> None:
    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.devices())
    result = run(workdir, train=make_data(32), **SETTINGS)
    params = flat_params(result.state.params)
    if process_id == 0:
        np.savez(os.path.join(workdir, "distributed_params.npz"), **params)
    print(f"done {process_id} {result.history.status} {len(result.history.train)}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
