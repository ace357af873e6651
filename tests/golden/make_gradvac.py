"""Golden values of GradVac from TorchJD 0.18 (float64): three steps with the state threaded.

``torch.randperm`` is replaced by the identity so TorchJD visits the other tasks in increasing order,
like orthojax's ``gradvac(shuffle=False)``. Run: python tests/golden/make_gradvac.py
"""

import sys
from importlib.metadata import version

import numpy as np
import torch
from torchjd.aggregation import GradVac

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

torch.randperm = lambda n, *a, **k: torch.arange(n)
cases = []
for beta in [0.5, 0.01]:
    agg = GradVac(beta=beta)
    steps = list(jacobians(num_tasks=4, dim=6, seed=1).items())
    steps += [("random_again", np.random.default_rng(2).normal(size=(4, 6)))]
    outs = []
    for jname, J in steps:
        outs.append({"jacobian_name": jname, "jacobian": J, "expected": agg(torch.tensor(J)).numpy(),
                     "targets": agg.gramian_weighting._phi_t.numpy().copy()})
    cases.append({"params": {"beta": beta}, "steps": outs})
write("gradvac", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
