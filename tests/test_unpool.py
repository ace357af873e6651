"""max_pool_with_indices / max_unpool against naive NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthojax.models.unpool import max_pool_with_indices, max_unpool, pooled_size

# One compiled program per case keeps the tests fast (eager mode compiles every primitive).
pool = jax.jit(max_pool_with_indices, static_argnums=(1, 2, 3))
unpool = jax.jit(max_unpool, static_argnums=(2, 3))


def naive_pool(x, window, stride, ceil_mode):
    """Loop over every window; first maximum in row-major order; flat index h * W + w."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = window, stride
    ho, wo = pooled_size(h, kh, sh, ceil_mode), pooled_size(w, kw, sw, ceil_mode)
    y = np.zeros((n, ho, wo, c), x.dtype)
    idx = np.zeros((n, ho, wo, c), np.int64)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    best, arg = -np.inf, -1
                    for a in range(kh):
                        for d in range(kw):
                            r, q = i * sh + a, j * sw + d
                            if r < h and q < w and x[b, r, q, ch] > best:
                                best, arg = x[b, r, q, ch], r * w + q
                    y[b, i, j, ch], idx[b, i, j, ch] = best, arg
    return y, idx


def naive_unpool(y, idx, size):
    n, ho, wo, c = y.shape
    out = np.zeros((n, size[0] * size[1], c), y.dtype)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    out[b, idx[b, i, j, ch], ch] = y[b, i, j, ch]
    return out.reshape(n, size[0], size[1], c)


CASES = [
    # (H, W, window, stride, ceil_mode)
    (8, 6, (2, 2), (2, 2), False),
    (7, 5, (2, 2), (2, 2), False),  # odd sizes, floor: last row/column dropped
    (7, 5, (2, 2), (2, 2), True),  # odd sizes, ceil: partial windows kept
    (9, 7, (3, 3), (2, 2), False),  # overlapping windows
    (5, 8, (3, 2), (2, 2), True),
]


@pytest.mark.parametrize("h,w,window,stride,ceil_mode", CASES)
def test_pool_and_unpool_match_naive_numpy(h, w, window, stride, ceil_mode):
    rng = np.random.default_rng(h * 100 + w)
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    y, idx = pool(jnp.asarray(x), window, stride, ceil_mode)
    y_ref, idx_ref = naive_pool(x, window, stride, ceil_mode)
    assert y.shape == y_ref.shape and idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), y_ref)
    np.testing.assert_array_equal(np.asarray(idx), idx_ref)
    ref = naive_unpool(y_ref, idx_ref, (h, w))
    np.testing.assert_array_equal(np.asarray(unpool(y, idx, (h, w), None)), ref)  # scatter
    if window == stride:  # gather-free path for non-overlapping windows
        np.testing.assert_array_equal(np.asarray(unpool(y, idx, (h, w), window)), ref)


def test_ties_pick_first_maximum_in_row_major_order():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 1, 0, 0] = x[0, 1, 1, 0] = 5.0  # tie in the top-left window: (1, 0) wins
    y, idx = pool(jnp.asarray(x), 2, None, False)
    assert int(idx[0, 0, 0, 0]) == 1 * 4 + 0
    assert int(idx[0, 1, 1, 0]) == 2 * 4 + 2  # all-zero window: its first cell
    np.testing.assert_array_equal(np.asarray(y), naive_pool(x, (2, 2), (2, 2), False)[0])


def test_gradient_of_a_tie_goes_to_the_first_maximum_only():
    x = jnp.asarray([[[[1.0], [1.0]], [[0.0], [1.0]]]])  # (1, 2, 2, 1), three tied maxima
    g = jax.grad(lambda x: jnp.sum(max_pool_with_indices(x)[0]))(x)
    np.testing.assert_array_equal(np.asarray(g)[0, ..., 0], [[1.0, 0.0], [0.0, 0.0]])


def test_integer_input_with_ceil_padding():
    x = np.random.default_rng(0).integers(-5, 5, size=(1, 5, 3, 2)).astype(np.int32)
    y, idx = pool(jnp.asarray(x), 2, 2, True)
    y_ref, idx_ref = naive_pool(x.astype(np.float64), (2, 2), (2, 2), True)
    np.testing.assert_array_equal(np.asarray(y), y_ref)
    np.testing.assert_array_equal(np.asarray(idx), idx_ref)


def test_unpool_of_pool_keeps_maxima_and_zeros_elsewhere():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 4, 3)), jnp.float32)
    y, idx = pool(x, 2, None, False)
    up = np.asarray(unpool(y, idx, (6, 4), 2))
    mask = up != 0
    assert mask.reshape(2, 3, 2, 2, 2, 3).sum(axis=(2, 4)).max() == 1  # one survivor per window
    np.testing.assert_array_equal(up[mask], np.asarray(x)[mask])


def test_gradients_flow_to_maxima_and_through_unpool():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    r = jnp.asarray(rng.normal(size=(1, 3, 3, 2)), jnp.float32)
    y, idx = pool(x, 2, None, False)
    gx = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_with_indices(x)[0] * r)))(x)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(unpool(r, idx, (6, 6), None)))
    s = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    gy = jax.jit(jax.grad(lambda y: jnp.sum(max_unpool(y, idx, (6, 6), 2) * s)))(y)
    np.testing.assert_allclose(np.asarray(gy), np.take_along_axis(
        np.asarray(s).reshape(1, 36, 2), np.asarray(idx).reshape(1, 9, 2), axis=1).reshape(1, 3, 3, 2))


def test_pooled_size_rules():
    assert pooled_size(7, 2, 2) == 3 and pooled_size(7, 2, 2, True) == 4
    assert pooled_size(8, 2, 2, True) == 4 and pooled_size(9, 3, 2) == 4
    assert pooled_size(1, 2, 2) == 0 and pooled_size(1, 2, 2, True) == 1


def test_bad_input_errors():
    shape = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.float32)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        jax.eval_shape(max_pool_with_indices, shape(4, 4, 1))
    with pytest.raises(ValueError, match="window"):
        jax.eval_shape(lambda x: max_pool_with_indices(x, window=0), shape(1, 4, 4, 1))
    with pytest.raises(ValueError, match="smaller than the window"):
        jax.eval_shape(lambda x: max_pool_with_indices(x, window=2), shape(1, 1, 4, 1))
    idx = jax.ShapeDtypeStruct((1, 2, 2, 1), jnp.int32)
    with pytest.raises(ValueError, match="same"):
        jax.eval_shape(lambda y, i: max_unpool(y, i[..., :0], (4, 4)), shape(1, 2, 2, 1), idx)
    with pytest.raises(ValueError, match="smaller than the pooled size"):
        jax.eval_shape(lambda y, i: max_unpool(y, i, (1, 4)), shape(1, 2, 2, 1), idx)
