"""Golden directions of TorchJD 0.18's Gramian aggregators (float64) for tests/test_aggregators.py.

MGDA, PCGrad, IMTL-G, Aligned-MTL, UPGrad, DualProj and CAGrad on conflicting full-rank Jacobians at unit
scale (above TorchJD's trace threshold, so its normalisation matches ours). Settings that make TorchJD solve
the same problem as the orthojax aggregator it is compared with:
* MGDA: Frank-Wolfe with epsilon=1e-12, max_iters=100000 (its default epsilon=1e-3 stops early);
* PCGrad: ``torch.randperm`` replaced by the identity permutation, i.e. orthojax's ``random_order=False``;
* CAGrad: c=0.4, compared with orthojax's ``rescale=0`` (TorchJD does not rescale).
Needs torchjd[quadprog_projector] (quadprog, qpsolvers) for UPGrad and DualProj.
Run: python tests/golden/make_gramian_aggregators.py (writes gramian_aggregators.json beside it).
"""

import json
import pathlib
from importlib.metadata import version

import numpy as np
import torch
from torchjd.aggregation import MGDA, CAGrad, DualProj, IMTLG, AlignedMTL, PCGrad, UPGrad
from torchjd.aggregation import _pcgrad

torch.set_default_dtype(torch.float64)


def jacobians():
    rng = np.random.default_rng(2024)
    out = {}
    for T, P in ((2, 4), (3, 5), (4, 6)):
        J = rng.normal(size=(T, P))
        J[1] -= 1.2 * J[0]  # a conflict between the first two tasks
        out[f"conflicting_{T}x{P}"] = J
    return out


AGGREGATORS = {
    "mgda": lambda: MGDA(epsilon=1e-12, max_iters=100000),
    "pcgrad": PCGrad,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "cagrad": lambda: CAGrad(c=0.4),
}

_pcgrad.torch.randperm = lambda n, *a, **k: torch.arange(n)
cases = []
for jname, J in jacobians().items():
    for name, make in AGGREGATORS.items():
        d = make()(torch.tensor(J)).numpy()
        cases.append({"aggregator": name, "jacobian_name": jname, "jacobian": J.tolist(), "expected": d.tolist()})
meta = {"torchjd": version("torchjd"), "torch": torch.__version__.split("+")[0]}
path = pathlib.Path(__file__).with_name("gramian_aggregators.json")
path.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
print(f"wrote {len(cases)} cases to {path}")
