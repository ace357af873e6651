"""Golden values of Krum from TorchJD 0.18 (float64). Run: python tests/golden/make_krum.py"""

import sys

import torch
from importlib.metadata import version
from torchjd.aggregation import Krum

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _cases import jacobians, write  # noqa: E402

cases = []
for jname, J in jacobians(num_tasks=6).items():
    Jt = torch.tensor(J, dtype=torch.float64)
    for f, m in [(0, 1), (1, 1), (1, 3), (2, 2), (3, 6)]:
        d = Krum(n_byzantine=f, n_selected=m)(Jt).numpy()
        cases.append({"jacobian_name": jname, "jacobian": J, "params": {"n_byzantine": f, "n_selected": m},
                      "expected": d})
write("krum", {"torchjd": version("torchjd"), "torch": torch.__version__}, cases)
