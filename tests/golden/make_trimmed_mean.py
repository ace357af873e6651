"""Golden values of TrimmedMean from TorchJD 0.18 (float64). Run: python tests/golden/make_trimmed_mean.py"""

import sys

import torch
from importlib.metadata import version
from torchjd.aggregation import TrimmedMean

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

cases = []
for jname, J in jacobians(num_tasks=5).items():
    Jt = torch.tensor(J, dtype=torch.float64)
    for k in [0, 1, 2]:
        cases.append({"jacobian_name": jname, "jacobian": J, "params": {"trim_number": k},
                      "expected": TrimmedMean(trim_number=k)(Jt).numpy()})
write("trimmed_mean", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
