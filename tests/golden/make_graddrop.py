"""Golden values of GradDrop from TorchJD 0.18 (float64), with the uniform draws U fixed and stored.

TorchJD draws U with ``torch.rand``; here ``torch.rand`` is replaced by the stored U so that the reference
and orthojax see the same draws. Run: python tests/golden/make_graddrop.py
"""

import sys
from importlib.metadata import version

import numpy as np
import torch
from torchjd.aggregation import GradDrop

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

rng = np.random.default_rng(123)
cases = []
for jname, J in jacobians(num_tasks=4, dim=9).items():
    J = J.copy()
    J[:, 4] = 0.0  # an all-zero coordinate
    for leak in [None, [0.0, 0.25, 0.5, 1.0]]:
        U = rng.uniform(size=J.shape[1])
        real_rand = torch.rand
        torch.rand = lambda *a, **k: torch.tensor(U, dtype=torch.float64)
        try:
            agg = GradDrop(leak=None if leak is None else torch.tensor(leak, dtype=torch.float64))
            d = agg(torch.tensor(J)).numpy()
        finally:
            torch.rand = real_rand
        cases.append({"jacobian_name": jname, "jacobian": J, "params": {"leak": leak}, "uniform": U, "expected": d})
write("graddrop", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
