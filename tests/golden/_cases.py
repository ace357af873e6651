"""Shared Jacobians for the golden-value scripts (deterministic, float64) and the JSON writer.

Run a script from the repository root, e.g. ``python tests/golden/make_krum.py``; it needs torch and
torchjd (the reference) and rewrites ``tests/golden/<name>.json``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def jacobians(num_tasks: int = 5, dim: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Random, opposing (conflicting) and rank-deficient (T, P) Jacobians in float64."""
    rng = np.random.default_rng(seed)
    random = rng.normal(size=(num_tasks, dim))
    base = rng.normal(size=(dim,))
    opposing = np.stack([base * (1.0 + 0.5 * t) * (-1.0) ** t for t in range(num_tasks)])
    opposing = opposing + 0.05 * rng.normal(size=opposing.shape)
    basis = rng.normal(size=(2, dim))
    rank_deficient = rng.normal(size=(num_tasks, 2)) @ basis
    return {"random": random, "opposing": opposing, "rank_deficient": rank_deficient}


def write(name: str, meta: dict, cases: list[dict]) -> pathlib.Path:
    """Write ``{"meta": meta, "cases": cases}`` to tests/golden/<name>.json (arrays as nested lists)."""

    def plain(x):
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    path = HERE / f"{name}.json"
    path.write_text(json.dumps({"meta": plain(meta), "cases": plain(cases)}, indent=1) + "\n")
    return path


def load(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text())
