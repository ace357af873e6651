"""FairGrad against TorchJD 0.18 (golden, live; SciPy least_squares inside) and a tight SciPy solve."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

from golden._props import check_basics, load
from orthojax.aggregators.fairgrad import fairgrad, fairgrad_solve


def _scipy_weights(G, alpha):
    res = least_squares(lambda w: G @ w - w ** (-1.0 / alpha), np.ones(len(G)) / len(G), bounds=(1e-12, np.inf),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10000)
    return res.x


def test_matches_torchjd_golden_and_tight_scipy(x64):
    for n, case in enumerate(load("fairgrad")["cases"]):
        J = np.asarray(case["jacobian"])
        alpha = case["params"]["alpha"]
        agg = fairgrad(alpha)
        d, _ = check_basics(agg, jnp.asarray(J)) if n < 2 else agg(jnp.asarray(J))
        np.testing.assert_allclose(np.asarray(d), case["expected"], rtol=1e-4, atol=1e-5)  # the reference stops at least_squares defaults
        if alpha > 0:
            w, r = fairgrad_solve(jnp.asarray(J @ J.T), alpha)
            assert float(r) <= 1e-12
            np.testing.assert_allclose(np.asarray(w), _scipy_weights(J @ J.T, alpha), rtol=1e-7)
            np.testing.assert_allclose(J @ np.asarray(d), np.asarray(w) ** (-1.0 / alpha), rtol=1e-9)


def test_matches_torchjd_live(x64):
    torch = pytest.importorskip("torch")
    agg = pytest.importorskip("torchjd.aggregation")
    J = np.random.default_rng(5).normal(size=(4, 6))
    expected = agg.FairGrad(alpha=1.5)(torch.tensor(J)).numpy()
    np.testing.assert_allclose(np.asarray(fairgrad(1.5)(jnp.asarray(J))[0]), expected, rtol=1e-5)


def test_scale_law_and_uniform_limit(x64):
    J = np.random.default_rng(6).normal(size=(3, 5))
    for alpha in (0.5, 1.0, 3.0):
        p = 1.0 / alpha
        d = np.asarray(fairgrad(alpha)(jnp.asarray(J))[0])
        for c in (1e-3, 1e4):
            np.testing.assert_allclose(np.asarray(fairgrad(alpha)(jnp.asarray(c * J))[0]),
                                       c ** ((p - 1) / (p + 1)) * d, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(fairgrad(0.0)(jnp.asarray(J))[0]), J.mean(axis=0), rtol=1e-12)


def test_float32_extreme_scale_and_zero():
    J = jnp.asarray(np.random.default_rng(7).normal(size=(3, 5)), jnp.float32)
    d = np.asarray(fairgrad()(J)[0])
    np.testing.assert_allclose(np.asarray(fairgrad()(1e30 * J)[0]), d, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(fairgrad()(jnp.zeros((3, 5)))[0]) == 0)


def test_errors():
    with pytest.raises(ValueError, match="alpha"):
        fairgrad(-1.0)
    with pytest.raises(TypeError, match="alpha"):
        fairgrad("1")
    with pytest.raises(ValueError, match="stateless"):
        fairgrad()(jnp.ones((2, 3)), 1)
