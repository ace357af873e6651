"""RotoGrad (rotate_only, rotograd, rotograd_norm) against hand computation, and its two promises on a toy:
the rotations align each back-rotated task gradient with the common direction, and RotoGrad hands the
encoder every task's gradient with the same magnitude."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from jax.scipy.linalg import expm

from orthojax.methods import MultiTaskProblem, get_method, rotate_only, rotograd, rotograd_norm
from orthojax.methods.rotograd import rotate_representations, rotation_matrices
from test_methods_common import make_toy

M = 3  # rotate the first 3 of the toy's 4 channels: the pass-through path is exercised too


@pytest.fixture(autouse=True)
def _full_precision_float32_matmuls():
    """The oracles are float64 / explicit; on GPUs XLA's default float32 matmuls use TF32 (~1e-3 relative)."""
    with jax.default_matmul_precision("highest"):
        yield


def _rot(z, r):
    m = r.shape[-1]
    return jnp.concatenate([z[..., :m] @ r.T, z[..., m:]], axis=-1)


def _oracle(problem, params, batch, rotations):
    """Per-task quantities from explicit per-task jax.grad calls with the rotations held fixed."""
    zs, extras = problem.encode(params, batch, None)
    z = zs[0]
    T = len(zs)

    def loss_k(p, k):
        zs, extras = problem.encode(p, batch, None)
        return problem.decode(p, tuple(_rot(zj, rj) for zj, rj in zip(zs, rotations)), extras, batch, None)[0][k]

    def loss_k_of_z(zz, k):
        return problem.decode(params, tuple(_rot(zz, rj) for rj in rotations), extras, batch, None)[0][k]

    def loss_k_of_rotated(zt, k):
        zts = [_rot(z, rj) for rj in rotations]
        zts[k] = zt
        return problem.decode(params, tuple(zts), extras, batch, None)[0][k]

    g = [jax.grad(loss_k_of_z)(z, k) for k in range(T)]
    h = [jax.grad(loss_k_of_rotated)(_rot(z, rotations[k]), k) for k in range(T)]
    param_grads = [jax.grad(loss_k)(params, k) for k in range(T)]
    losses = jnp.stack([loss_k(params, k) for k in range(T)])
    return g, h, param_grads, losses


def _jit_oracle(problem, batch):
    run = jax.jit(lambda params, rotations: _oracle(problem, params, batch, rotations))

    def oracle(params, rotations):
        g, h, param_grads, losses = run(params, rotations)
        return [np.asarray(x) for x in g], [np.asarray(x) for x in h], param_grads, np.asarray(losses)

    return oracle


def _reference(g):
    n = np.array([np.linalg.norm(x) for x in g])
    mean_norm = np.linalg.norm(sum(g) / len(g))
    return sum(x * mean_norm / nk for x, nk in zip(g, n)) / len(g), n


@jax.jit
def _skew_grad(base, skew, h, r):
    """The package's rotation loss: geotorch's strict-lower-triangle skew, summed over a (B, m) batch."""
    def loss(skew):
        lower = jnp.tril(skew, -1)
        rs = jnp.matmul(base, jax.vmap(expm)(lower - jnp.swapaxes(lower, 1, 2)))
        return sum(jnp.sum((_rot(r, rk) - hk) ** 2) for rk, hk in zip(rs, h))

    return jax.grad(loss)(skew)


def _skew_after_sgd(state, h, r, lr):
    skew = state.learnable["skew"]
    return np.asarray(skew - lr * _skew_grad(state.base, skew, h, jnp.asarray(r)))


def _combine(param_grads, coefficients):
    return jax.tree.map(lambda *gs: sum(c * x for c, x in zip(coefficients, gs)), *param_grads)


def _assert_tree_close(a, b, rtol=2e-4, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_rotograd_three_steps_match_hand_computation():
    """Step 0 records n^0, step 1 uses it, step 2 (= burn_in_period) records it again."""
    params, problem, batch = make_toy(jax.random.key(0), scales=(1.0, 4.0))
    lr = 0.05
    method = rotograd(latent_size=M, burn_in_period=2, optimizer=optax.sgd(lr), seed=3)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    state = method.init(params, 2)
    R0 = np.asarray(rotation_matrices(state))
    np.testing.assert_allclose(np.einsum("tij,tkj->tik", R0, R0), np.broadcast_to(np.eye(M), (2, M, M)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R0), [1.0, 1.0], rtol=1e-5)
    assert not np.allclose(R0, np.eye(M), atol=1e-2)  # a random start
    n0 = None
    oracle = _jit_oracle(problem, batch)
    for it in range(3):
        rotations = rotation_matrices(state)
        g, h, param_grads, losses = oracle(params, rotations)
        r, n = _reference(g)
        n0 = n if it in (0, 2) else n0
        rho = n / n0
        C = np.sum(rho / rho.sum() * n)
        out = step(params, state)
        expected = {
            "encoder": _combine(param_grads, C / n)["encoder"],
            "heads": _combine(param_grads, [1.0, 1.0])["heads"],
        }
        _assert_tree_close(out.grads, expected)
        np.testing.assert_allclose(out.task_losses, losses, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["grad_norms"], n, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["encoder_grad_norms"], [C, C], rtol=1e-5)
        np.testing.assert_allclose(out.state.initial_norms, n0, rtol=1e-5)
        cos = [np.sum(gk * r) / (np.linalg.norm(gk) * np.linalg.norm(r)) for gk in g]
        np.testing.assert_allclose(out.metrics["reference_cosine"], cos, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.state.learnable["skew"], _skew_after_sgd(state, h, r, lr), rtol=1e-4, atol=1e-6)
        state = out.state
        params = jax.tree.map(lambda p, gr: p - 0.2 * gr, params, out.grads)


def test_rotate_only_and_rotograd_norm_match_hand_computation():
    params, problem, batch = make_toy(jax.random.key(1), scales=(1.0, 4.0))
    lr, alpha = 0.1, 1.5
    for method in (rotate_only(latent_size=M, optimizer=optax.sgd(lr)),
                   rotograd_norm(latent_size=M, alpha=alpha, optimizer=optax.sgd(lr))):
        state = method.init(params, 2)
        g, h, param_grads, _ = _jit_oracle(problem, batch)(params, rotation_matrices(state))
        out = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))(params, state)
        # w = 2 softmax(0) = (1, 1) at the start: both give the encoder g_0 + g_1
        _assert_tree_close(out.grads, _combine(param_grads, [1.0, 1.0]))
        np.testing.assert_allclose(out.metrics["task_weights"], [1.0, 1.0], rtol=1e-6)
        if method.name == "rotograd_norm":
            n = np.array([np.linalg.norm(x) for x in g])
            target = np.linalg.norm((g[0] + g[1]) / 2)  # L / L^0 = 1 at the first step
            dloss_dw = np.sign(n - target) * n
            jac = 2 * (np.diag([0.5, 0.5]) - 0.25)  # d(2 softmax(v))/dv at v = 0
            np.testing.assert_allclose(out.state.learnable["log_weights"], -lr * jac.T @ dloss_dw, rtol=1e-4, atol=1e-7)
        else:
            assert set(out.state.learnable) == {"skew"}


def test_rotations_align_task_gradients_with_the_common_direction():
    """RotateOnly on a 2-task toy whose heads start opposed (same target, a_1 = -a_0, R_k = I): the learned
    rotations raise cos(R_k^T h_k, r) to ~1, far above the same training with frozen rotations."""
    params, problem, batch = make_toy(jax.random.key(4), d=4, batch=16)
    x, ys = batch
    batch = (x, jnp.stack([ys[:, 0], ys[:, 0]], axis=1))
    params["heads"]["task1"]["kernel"] = -params["heads"]["task0"]["kernel"]
    opt = optax.adam(1e-2)
    final = {}
    for rotation_lr in (3e-2, 1e-9):
        method = rotate_only(latent_size=4, learning_rate=rotation_lr, random_init=False)
        state, p, opt_state = method.init(params, 2), params, opt.init(params)

        @jax.jit
        def train_step(p, state, opt_state):
            out = method.step(problem, p, state, batch, None)
            updates, opt_state = opt.update(out.grads, opt_state, p)
            return optax.apply_updates(p, updates), out.state, opt_state, out.metrics["reference_cosine"]

        cosines = []
        for _ in range(40):
            p, state, opt_state, cos = train_step(p, state, opt_state)
            cosines.append(np.asarray(cos))
        final[rotation_lr] = np.mean(cosines[-5:], axis=0)
        if rotation_lr > 1e-6:
            assert np.all(final[rotation_lr] > np.asarray(cosines[0]) + 0.3), (cosines[0], final[rotation_lr])
            R = np.asarray(rotation_matrices(state))
            np.testing.assert_allclose(np.einsum("tij,tkj->tik", R, R), np.broadcast_to(np.eye(4), R.shape), atol=1e-4)
            # evaluation decodes the rotated representations
            zs, extras = problem.encode(p, batch, None)
            losses, _ = problem.decode(p, rotate_representations(state, zs), extras, batch, None)
            zs_plain = problem.decode(p, zs, extras, batch, None)[0]
            assert not np.allclose(losses, zs_plain, rtol=1e-3)
    assert np.all(final[3e-2] > 0.95), final
    assert np.all(final[3e-2] > final[1e-9] + 0.2), final


def test_rotograd_equalises_the_task_gradient_magnitudes():
    """Task 1's loss is 100x task 0's: the raw gradients n_k = ||dL_k/dz|| (what rotate_only hands the
    encoder) are very unequal; RotoGrad hands the encoder both with the same norm C."""
    params, problem, batch = make_toy(jax.random.key(2), scales=(1.0, 100.0))
    method = get_method("rotograd", latent_size=4)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    out = step(params, method.init(params, 2))
    out = step(jax.tree.map(lambda p, g: p - 1e-3 * g, params, out.grads), out.state)  # rho != 1 now
    raw, received = np.asarray(out.metrics["grad_norms"]), np.asarray(out.metrics["encoder_grad_norms"])
    assert raw.max() / raw.min() > 10
    np.testing.assert_allclose(received[0], received[1], rtol=1e-5)
    assert raw.min() < received[0] < raw.max()


def test_latent_size_larger_than_the_representation_is_an_error():
    params, problem, batch = make_toy(jax.random.key(0), d=4)
    method = rotograd(latent_size=5)
    with pytest.raises(ValueError, match="latent_size"):
        method.step(problem, params, method.init(params, 2), batch, None)


# --------------------------------------------------------------------------------------------------------------
# Parity with the package (rotograd 0.1.6 + geotorch): a NumPy float64 re-derivation of whole steps
# --------------------------------------------------------------------------------------------------------------
#
# The package rotates with R_k = B_k expm(tril(X_k, -1) - tril(X_k, -1)^T) (geotorch's orthogonal/expm: only the
# strict lower triangle of X_k is learnt) and its rotation loss for task k is
#     einsum('...ij,...ij->...', d, d).mean()   with d = R_k r - h_k laid out as (..., rotated, rest):
# for (B, m) vectors the einsum sums the batch too (a scalar); for (B, C, H, W) maps it is the batch mean of
# the per-example sum. The oracle below encodes exactly that, with expm and its Frechet derivative from SciPy.


def _np_problem(seed, spatial, d_in=2, d=4, batch=5, scales=(1.0, 4.0)):
    """z = tanh(tanh(x W1 + b1) W2 + b2) on (B, *spatial, d_in) inputs; head k: flatten(z~_k) a_k + c_k;
    L_k = scale_k mean_b (pred - y)^2. Returns NumPy float64 params, x, ys."""
    rng = np.random.default_rng(seed)
    p = int(np.prod(spatial)) * d
    params = {
        "W1": rng.normal(size=(d_in, d)) / np.sqrt(d_in), "b1": 0.1 * rng.normal(size=(d,)),
        "W2": rng.normal(size=(d, d)) / np.sqrt(d), "b2": 0.1 * rng.normal(size=(d,)),
        "a": rng.normal(size=(2, p, 1)) / np.sqrt(p), "c": np.zeros((2, 1)),
    }
    x = rng.normal(size=(batch,) + tuple(spatial) + (d_in,))
    ys = rng.normal(size=(2, batch, 1))
    return params, x, ys, np.asarray(scales, np.float64)


def _jax_problem(x, ys, scales):
    """The JAX twin of :func:`_np_problem`; with ``scales=None`` the batch is (x, ys, scales)."""

    def encode(p, batch, rng):
        x = batch[0]
        h = jnp.tanh(x @ p["W1"] + p["b1"])
        z = jnp.tanh(h @ p["W2"] + p["b2"])
        return (z, z), None

    def decode(p, zs, extras, batch, rng):
        ys = batch[1]
        c = batch[2] if scales is None else scales
        out = []
        for k in range(2):
            pred = zs[k].reshape(zs[k].shape[0], -1) @ p["a"][k] + p["c"][k]
            out.append(c[k] * jnp.mean((pred - ys[k]) ** 2))
        return jnp.stack(out), None

    def task_losses(p, batch, rng):
        return decode(p, *encode(p, batch, rng), batch, rng)

    return MultiTaskProblem(task_losses, last_shared="W2", shared=("W1", "b1", "W2", "b2"),
                            encode=encode, decode=decode)


def _np_rot(v, R):
    """R applied to the first m channels of the last axis (v @ R^T), the rest unchanged."""
    m = R.shape[0]
    return np.concatenate([v[..., :m] @ R.T, v[..., m:]], axis=-1)


class _NumpyRotoGrad:
    """RotoGrad (variant "rotograd" or "rotate_only") re-derived in NumPy float64, package semantics."""

    def __init__(self, variant, base, m, burn_in, rotation_opt, lr):
        self.variant, self.base, self.m, self.burn_in = variant, np.asarray(base, np.float64), m, burn_in
        self.X = np.zeros_like(self.base)
        self.opt, self.lr = rotation_opt, lr
        self.mu, self.nu, self.count = np.zeros_like(self.X), np.zeros_like(self.X), 0
        self.n0 = None

    def rotations(self):
        L = np.tril(self.X, -1)
        return np.stack([b @ scipy.linalg.expm(l - l.T) for b, l in zip(self.base, L)])

    def step(self, params, x, ys, scales):
        P = params
        B = x.shape[0]
        R = self.rotations()
        h1 = np.tanh(x @ P["W1"] + P["b1"])
        z = np.tanh(h1 @ P["W2"] + P["b2"])
        losses, h, head_grads = [], [], {"a": np.zeros_like(P["a"]), "c": np.zeros_like(P["c"])}
        for k in range(2):
            zk = _np_rot(z, R[k])
            flat = zk.reshape(B, -1)
            pred = flat @ P["a"][k] + P["c"][k]
            losses.append(scales[k] * np.mean((pred - ys[k]) ** 2))
            dpred = scales[k] * 2.0 / B * (pred - ys[k])  # (B, 1)
            head_grads["a"][k] = flat.T @ dpred
            head_grads["c"][k] = dpred.sum(axis=0)
            h.append((dpred @ P["a"][k].T).reshape(z.shape))  # dL_k / dz~_k
        g = [_np_rot(hk, R[k].T) for k, hk in enumerate(h)]  # dL_k / dz
        n = np.array([np.linalg.norm(gk) for gk in g])
        mean_norm = np.linalg.norm(sum(g) / 2)
        r = sum(gk * mean_norm / nk for gk, nk in zip(g, n)) / 2
        # rotation loss and its gradient w.r.t. X_k (adjoint Frechet derivative of expm)
        red = 1.0 if z.ndim == 2 else 1.0 / B
        m = self.m
        grad_X = np.zeros_like(self.X)
        rot_losses = []
        for k in range(2):
            diff = _np_rot(r, R[k]) - h[k]
            rot_losses.append(red * np.sum(diff ** 2))
            D = diff[..., :m].reshape(-1, m)
            Rr = r[..., :m].reshape(-1, m)
            G = 2.0 * red * D.T @ Rr  # d loss / d R_k
            Lk = np.tril(self.X[k], -1)
            K = Lk - Lk.T
            gK = scipy.linalg.expm_frechet(K.T, self.base[k].T @ G, compute_expm=False)
            grad_X[k] = np.tril(gK - gK.T, -1)
        self.count += 1
        if self.opt == "sgd":
            self.X = self.X - self.lr * grad_X
        elif self.opt == "sign":
            self.X = self.X - self.lr * np.sign(grad_X)
        else:  # optax.adam defaults
            self.mu = 0.9 * self.mu + 0.1 * grad_X
            self.nu = 0.999 * self.nu + 0.001 * grad_X ** 2
            mhat, nhat = self.mu / (1 - 0.9 ** self.count), self.nu / (1 - 0.999 ** self.count)
            self.X = self.X - self.lr * mhat / (np.sqrt(nhat) + 1e-8)
        # the encoder's cotangent
        if self.n0 is None or self.count - 1 == self.burn_in:
            self.n0 = n
        if self.variant == "rotate_only":
            weights = np.ones(2)
        else:
            rho = n / self.n0
            C = np.sum(rho / rho.sum() * n)
            weights = C / n
        cot = sum(w * gk for w, gk in zip(weights, g))
        u2 = cot * (1 - z ** 2)
        dh1 = u2 @ P["W2"].T
        u1 = dh1 * (1 - h1 ** 2)
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
        grads = {"W1": flat(x).T @ flat(u1), "b1": flat(u1).sum(0), "W2": flat(h1).T @ flat(u2),
                 "b2": flat(u2).sum(0), **head_grads}
        cos = [np.sum(gk * r) / (nk * np.linalg.norm(r)) for gk, nk in zip(g, n)]
        return dict(grads=grads, losses=np.array(losses), norms=n, weights=weights, cosines=np.array(cos),
                    rotation_loss=np.array(rot_losses))


def _run_parity(variant, spatial, rotation_opt, steps, dtype=np.float32, m=3, rtol=2e-4, atol=1e-6):
    lr_model, lr_rot, burn_in = 0.05, (0.5 if rotation_opt == "sgd" else 0.05), 2
    p_np, x, ys, scales = _np_problem(7, spatial)
    problem = _jax_problem(jnp.asarray(x, dtype), jnp.asarray(ys, dtype), jnp.asarray(scales, dtype))
    batch = (jnp.asarray(x, dtype), jnp.asarray(ys, dtype))
    factory = rotograd if variant == "rotograd" else rotate_only
    optimizer = optax.sgd(lr_rot) if rotation_opt == "sgd" else optax.adam(lr_rot)
    method = factory(latent_size=m, burn_in_period=burn_in, optimizer=optimizer, seed=5)
    params = {k: jnp.asarray(v, dtype) for k, v in p_np.items()}
    state = method.init(params, 2)
    oracle = _NumpyRotoGrad(variant, np.asarray(state.base, np.float64), m, burn_in, rotation_opt, lr_rot)
    step = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))
    for it in range(steps):
        want = oracle.step(p_np, x, ys, scales)
        out = step(params, state)
        for key, value in want["grads"].items():
            np.testing.assert_allclose(out.grads[key], value, rtol=rtol, atol=atol, err_msg=f"step {it} {key}")
        np.testing.assert_allclose(out.task_losses, want["losses"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(out.metrics["grad_norms"], want["norms"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(out.metrics["task_weights"], want["weights"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(out.metrics["reference_cosine"], want["cosines"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(out.metrics["rotation_loss"], want["rotation_loss"], rtol=rtol, atol=atol)
        state = out.state
        np.testing.assert_allclose(state.learnable["skew"], oracle.X, rtol=rtol, atol=atol, err_msg=f"step {it}")
        np.testing.assert_allclose(rotation_matrices(state), oracle.rotations(), rtol=rtol, atol=atol)
        params = jax.tree.map(lambda a, gr: a - lr_model * gr, params, out.grads)
        p_np = {k: v - lr_model * want["grads"][k] for k, v in p_np.items()}
    return state, oracle


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("spatial,rotation_opt", [((), "sgd"), ((3, 2), "sgd"), ((), "adam"), ((3, 2), "adam")],
                         ids=["vectors-sgd", "maps-sgd", "vectors-adam", "maps-adam"])
def test_rotograd_matches_the_package_numpy_rederivation(spatial, rotation_opt, steps):
    """One and five steps (burn-in at step 2) of RotoGrad against the NumPy re-derivation of the package:
    the encoder / head gradients, n_k, the weights C / n_k, cos(g_k, r), the rotation loss, X_k and R_k.
    Under SGD the old parametrisation (A - A^T, loss mean over positions) moved K 2/B (vectors) or 2/(H W)
    (maps) times as far; under Adam 2x."""
    state, oracle = _run_parity("rotograd", spatial, rotation_opt, steps)
    assert np.max(np.abs(oracle.X)) > 1e-3  # the rotations moved
    skew = np.asarray(state.learnable["skew"])
    assert np.all(np.triu(skew) == 0)  # only the strict lower triangle is learnt


def test_rotate_only_matches_the_package_numpy_rederivation():
    _run_parity("rotate_only", (3, 2), "sgd", 3)


def test_rotations_use_only_the_strict_lower_triangle():
    params, problem, batch = make_toy(jax.random.key(0))
    method = rotograd(latent_size=M)
    state = method.init(params, 2)
    rng = np.random.default_rng(0)
    X = rng.normal(size=state.learnable["skew"].shape).astype(np.float32)
    L = np.tril(X, -1).astype(np.float64)
    expected = np.stack([b @ scipy.linalg.expm(lk - lk.T) for b, lk in zip(np.asarray(state.base, np.float64), L)])
    got = rotation_matrices(state._replace(learnable={"skew": jnp.asarray(X)}))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Scale safety (float32) and float64 states
# --------------------------------------------------------------------------------------------------------------

SCALES = [1e-30, 1e-25, 1e-20, 1e-15, 1e-10, 1.0, 1e10, 1e15, 1e20, 1e25, 1e30]
SIGN_LR = 0.05


def _scale_setup(spatial=()):
    p_np, x, ys, base_scales = _np_problem(7, spatial)
    problem = _jax_problem(None, None, None)  # scales from the batch: one compilation for every c
    method = rotograd(latent_size=3, burn_in_period=2, seed=5,
                      optimizer=optax.chain(optax.scale_by_sign(), optax.scale(-SIGN_LR)))
    params = {k: jnp.asarray(v, jnp.float32) for k, v in p_np.items()}
    state = method.init(params, 2)
    step = jax.jit(lambda s, c: method.step(problem, params, s, (jnp.asarray(x, jnp.float32),
                                                                  jnp.asarray(ys, jnp.float32), c), None))
    return p_np, x, ys, base_scales, state, step


def _assert_finite(out, c, skip=("rotation_loss",)):
    metrics = {k: v for k, v in out.metrics.items() if k not in skip}
    for leaf in jax.tree.leaves((out.grads, out.state, metrics, out.loss, out.task_losses)):
        assert np.all(np.isfinite(leaf)), c


@pytest.mark.parametrize("spatial", [(), (3, 2)], ids=["vectors", "maps"])
def test_rotograd_is_scale_safe_in_float32(spatial):
    """Every task loss times c, c from 1e-30 to 1e30, float32, against the NumPy float64 oracle at the same c:
    n_k (c times), the weights C / n_k and cos(g_k, r) (both invariant), the model gradient (c times); no
    norm flushes to zero near 1e-20 or overflows near 1e20, and everything stays finite. The rotation loss
    grows like c^2: where c^2 times it is a float32 number, the rotation step (sign SGD, invariant) equals
    the oracle's; beyond, the update is skipped (rotations unchanged) and the reported loss is inf."""
    p_np, x, ys, base_scales, state, step = _scale_setup(spatial)
    base = np.asarray(state.base, np.float64)
    for c in SCALES:
        oracle = _NumpyRotoGrad("rotograd", base, 3, 2, "sign", SIGN_LR)
        want = oracle.step(p_np, x, ys, base_scales * c)
        out = step(state, jnp.asarray(base_scales * c, jnp.float32))
        msg = f"c={c}"
        np.testing.assert_allclose(out.metrics["grad_norms"], want["norms"], rtol=1e-4, err_msg=msg)
        np.testing.assert_allclose(out.metrics["task_weights"], want["weights"], rtol=1e-4, err_msg=msg)
        np.testing.assert_allclose(out.metrics["reference_cosine"], want["cosines"], rtol=1e-4, atol=1e-6, err_msg=msg)
        for key, value in want["grads"].items():
            np.testing.assert_allclose(out.grads[key], value, rtol=2e-4, atol=1e-6 * c, err_msg=f"{msg} {key}")
        _assert_finite(out, c)
        if 1e-15 <= c <= 1e15:
            np.testing.assert_allclose(out.metrics["rotation_loss"], want["rotation_loss"], rtol=1e-4, err_msg=msg)
        if c >= 1e-15:  # the signs survive even where c^2 x the gradient overflows to inf
            np.testing.assert_allclose(out.state.learnable["skew"], oracle.X, rtol=1e-6, atol=1e-7, err_msg=msg)
        if c >= 1e25:
            assert np.all(np.isinf(out.metrics["rotation_loss"]))  # c^2 x the loss is beyond float32


def test_rotation_update_that_overflows_is_skipped():
    """Adam on a rotation gradient beyond float32 (c = 1e25): the update would be NaN; it is skipped, the
    rotations and the optimiser state are kept, and the encoder still gets its finite gradient."""
    p_np, x, ys, base_scales = _np_problem(7, ())
    problem = _jax_problem(None, None, None)
    method = rotograd(latent_size=3, learning_rate=0.05, seed=5)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in p_np.items()}
    state = method.init(params, 2)
    step = jax.jit(lambda s, c: method.step(problem, params, s, (jnp.asarray(x, jnp.float32),
                                                                  jnp.asarray(ys, jnp.float32), c), None))
    out = step(state, jnp.asarray(base_scales * 1e25, jnp.float32))
    _assert_finite(out, 1e25)
    for new, old in zip(jax.tree.leaves((out.state.learnable, out.state.opt_state)),
                        jax.tree.leaves((state.learnable, state.opt_state))):
        np.testing.assert_array_equal(new, old)
    assert int(out.state.count) == 1
    moved = step(state, jnp.asarray(base_scales, jnp.float32)).state.learnable["skew"]
    assert np.max(np.abs(moved)) > 0.01  # at c = 1 the same step moves the rotations


def test_one_task_rescaled_keeps_the_reference_direction():
    """Only task 1's loss times c: r's direction, hence cos(g_k, r), is unchanged for every c, and the
    first step's weights C / n_k (alpha = 1/2) follow the oracle; everything finite."""
    p_np, x, ys, base_scales, state, step = _scale_setup()
    base = np.asarray(state.base, np.float64)
    cos_at_1 = _NumpyRotoGrad("rotograd", base, 3, 2, "sign", SIGN_LR).step(p_np, x, ys, base_scales)["cosines"]
    for c in SCALES:
        scales = base_scales * np.array([1.0, c])
        want = _NumpyRotoGrad("rotograd", base, 3, 2, "sign", SIGN_LR).step(p_np, x, ys, scales)
        out = step(state, jnp.asarray(scales, jnp.float32))
        np.testing.assert_allclose(out.metrics["reference_cosine"], cos_at_1, rtol=1e-4, atol=1e-6, err_msg=f"c={c}")
        np.testing.assert_allclose(out.metrics["task_weights"], want["weights"], rtol=1e-4, err_msg=f"c={c}")
        np.testing.assert_allclose(out.metrics["grad_norms"], want["norms"], rtol=1e-4, err_msg=f"c={c}")
        _assert_finite(out, c)


@pytest.mark.parametrize("variant", ["rotograd", "rotate_only"])
def test_float64_state_and_steps_match_numpy_to_1e9(variant):
    """Under x64 with float64 parameters every floating leaf of the state is float64 (the initial norms
    included) and five steps agree with the NumPy float64 re-derivation to ~1e-9."""
    with jax.enable_x64(True):
        state, oracle = _run_parity(variant, (3, 2), "adam", 5, dtype=np.float64, rtol=1e-9, atol=1e-12)
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (jnp.float64, jnp.int32), leaf.dtype


def test_rotograd_norm_state_follows_float64():
    with jax.enable_x64(True):
        params, problem, batch = make_toy(jax.random.key(0), dtype=jnp.float64)
        method = rotograd_norm(latent_size=M)
        state = method.init(params, 2)
        out = jax.jit(lambda p, s: method.step(problem, p, s, batch, None))(params, state)
        for tree in (state, out.state):
            for leaf in jax.tree.leaves(tree):
                assert leaf.dtype in (jnp.float64, jnp.int32), leaf.dtype
