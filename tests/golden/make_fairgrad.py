"""Golden values of FairGrad from TorchJD 0.18 (float64; SciPy least_squares inside).

Run: python tests/golden/make_fairgrad.py
"""

import sys
from importlib.metadata import version

import torch
from torchjd.aggregation import FairGrad

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

cases = []
for jname, J in jacobians(num_tasks=3, dim=6).items():
    if jname == "rank_deficient":
        continue
    for alpha in [0.0, 0.5, 1.0, 2.0]:
        cases.append({"jacobian_name": jname, "jacobian": J, "params": {"alpha": alpha},
                      "expected": FairGrad(alpha=alpha)(torch.tensor(J)).numpy()})
write("fairgrad", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
