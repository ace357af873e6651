"""Golden values of Constant / Sum / Mean from TorchJD 0.18 (float64). Run: python tests/golden/make_constant.py"""

import sys

import numpy as np
import torch
from importlib.metadata import version
from torchjd.aggregation import Constant, Mean, Sum

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

cases = []
for jname, J in jacobians().items():
    Jt = torch.tensor(J, dtype=torch.float64)
    w = np.linspace(-1.0, 2.0, J.shape[0])
    for agg, params in [(Sum(), {"kind": "sum"}), (Mean(), {"kind": "mean"}),
                        (Constant(torch.tensor(w, dtype=torch.float64)), {"kind": "constant", "weights": w})]:
        cases.append({"jacobian_name": jname, "jacobian": J, "params": params, "expected": agg(Jt).numpy()})
write("constant", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
