"""Golden values of ConFIG from TorchJD 0.18 (float64). Run: python tests/golden/make_config.py"""

import sys
from importlib.metadata import version

import numpy as np
import torch
from torchjd.aggregation import ConFIG

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

cases = []
for jname, J in jacobians(num_tasks=4, dim=7).items():
    for pref in [None, [1.0, 2.0, 0.5, 1.0]]:
        agg = ConFIG(None if pref is None else torch.tensor(pref, dtype=torch.float64))
        cases.append({"jacobian_name": jname, "jacobian": J, "params": {"pref": pref},
                      "expected": agg(torch.tensor(J)).numpy()})
J = np.random.default_rng(4).normal(size=(3, 5))
J[1] = 0.0
cases.append({"jacobian_name": "zero_row", "jacobian": J, "params": {"pref": None},
              "expected": ConFIG()(torch.tensor(J)).numpy()})
write("config", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
