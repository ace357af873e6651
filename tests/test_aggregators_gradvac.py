"""GradVac against TorchJD 0.18 (golden three-step runs, live) and a NumPy loop over the gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden._props import check_basics, load
from orthojax.aggregators.gradvac import GradVacState, gradvac, gradvac_order


def _numpy_gradvac(J, targets, order, beta, eps=1e-8):
    """LibMTL's loop on the gradient vectors themselves (no Gramian), float64."""
    J = np.asarray(J, np.float64)
    targets = np.array(targets, np.float64)
    pc = J.copy()
    for i in range(J.shape[0]):
        for j in order[i]:
            gi, gj = pc[i], J[j]
            phi = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj) + eps)
            hat = targets[i, j]
            if phi < hat:
                w = np.linalg.norm(gi) * (hat * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - hat**2)) / (
                    np.linalg.norm(gj) * np.sqrt(1 - hat**2) + eps)
                pc[i] = gi + w * gj
            targets[i, j] = (1 - beta) * hat + beta * phi
    return pc.sum(axis=0), targets


def test_matches_torchjd_golden_over_steps(x64):
    for case in load("gradvac")["cases"]:
        agg = gradvac(shuffle=False, **case["params"])
        run = jax.jit(agg)
        state = None
        for n, step in enumerate(case["steps"]):
            J = jnp.asarray(step["jacobian"], jnp.float64)
            d, state = check_basics(agg, J, state=state) if n == 0 else run(J, state)
            np.testing.assert_allclose(np.asarray(d), step["expected"], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(np.asarray(state.targets), step["targets"], rtol=1e-10, atol=1e-12)


def test_matches_torchjd_live(x64, monkeypatch):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    monkeypatch.setattr(torch, "randperm", lambda n, *a, **k: torch.arange(n))
    ref = agg.GradVac(beta=0.3)
    ours, state = gradvac(beta=0.3, shuffle=False), None
    rng = np.random.default_rng(8)
    for _ in range(2):
        J = rng.normal(size=(3, 5))
        d, state = ours(jnp.asarray(J), state)
        np.testing.assert_allclose(np.asarray(d), ref(torch.tensor(J)).numpy(), rtol=1e-10)


def test_shuffled_order_matches_numpy_loop(x64):
    rng = np.random.default_rng(0)
    J = rng.normal(size=(4, 6))
    J[1] = -0.8 * J[0] + 0.1 * rng.normal(size=6)
    key = jax.random.key(5)
    order = np.asarray(gradvac_order(4, key))
    assert all(sorted(order[i]) == [j for j in range(4) if j != i] for i in range(4))
    targets = rng.uniform(-0.5, 0.5, size=(4, 4))
    d, state = gradvac(beta=0.1)(jnp.asarray(J), GradVacState(jnp.asarray(targets)), key=key)
    d_np, t_np = _numpy_gradvac(J, targets, order, 0.1)
    np.testing.assert_allclose(np.asarray(d), d_np, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state.targets), t_np, rtol=1e-10, atol=1e-14)


def test_scale_safety_and_zero_float32():
    J = jnp.asarray(np.random.default_rng(3).normal(size=(3, 5)), jnp.float32)
    agg = gradvac(eps=0.0, shuffle=False)
    d, s = agg(J)
    for c in (1e-30, 1e30):  # the Gramian of c J is not representable in float32; the result scales
        dc, sc = agg(c * J)
        np.testing.assert_allclose(np.asarray(dc) / c, np.asarray(d), rtol=1e-4)
        np.testing.assert_allclose(np.asarray(sc.targets), np.asarray(s.targets), atol=1e-5)
    dz, sz = gradvac(shuffle=False)(jnp.zeros((3, 5)))
    assert np.all(np.asarray(dz) == 0) and np.all(np.isfinite(np.asarray(sz.targets)))


def test_errors():
    with pytest.raises(ValueError, match="beta"):
        gradvac(beta=1.5)
    with pytest.raises(ValueError, match="eps"):
        gradvac(eps=-1.0)
    with pytest.raises(TypeError, match="shuffle"):
        gradvac(shuffle=1)
    with pytest.raises(ValueError, match="key"):
        gradvac()(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="GradVacState"):
        gradvac(shuffle=False)(jnp.ones((2, 3)), GradVacState(jnp.zeros((3, 3))))
