"""Scale-safe elementwise arithmetic shared by the Gramian weightings (private).

Every helper keeps a result representable where a naive formula would overflow, underflow or divide by
zero: powers of two rescale exactly, ratios saturate at the dtype's largest finite value instead of inf,
and logarithms of zero are -inf without a NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _float_dtype(dtype) -> Any:
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32



def _pow2_exponent(maxabs: jax.Array) -> jax.Array:
    """e with maxabs = f 2^e, f in [0.5, 1) (0 for a zero or non-finite maxabs): x / 2^e is exact."""
    _, e = jnp.frexp(maxabs)
    return jnp.where((maxabs > 0) & jnp.isfinite(maxabs), e, 0).astype(jnp.int32)



def _pow2_normalised(jacobian: Any) -> tuple[jax.Array, Any]:
    """(e, J / 2^e) with max|J| = f 2^e, f in [0.5, 1) (e = 1 for a zero or non-finite J): the division is
    exact and the scaled Jacobian's Gramian neither overflows nor underflows."""
    maxabs = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(jacobian)]))
    e = _pow2_exponent(jnp.where(jnp.isfinite(maxabs) & (maxabs > 0), maxabs, 1))
    return e, jax.tree.map(lambda leaf: jnp.ldexp(leaf, -e), jacobian)



def _log(x: jax.Array) -> jax.Array:
    """log x for x >= 0, -inf at 0 (no warning, no NaN)."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1)), -jnp.inf)



def _saturate(x: jax.Array) -> jax.Array:
    big = jnp.finfo(x.dtype).max
    return jnp.clip(x, -big, big)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den elementwise, 0 where den == 0, saturated instead of inf."""
    pos = den > 0
    return jnp.where(pos, _saturate(num / jnp.where(pos, den, 1)), 0.0)


def _times_ratio(x: jax.Array, num: jax.Array, den: jax.Array) -> jax.Array:
    """x * num / den for num, den > 0: direct where representable, else through logarithms (saturated at the
    dtype's largest finite value, 0 when it underflows); 0 where x == 0 or den == 0."""
    ok = (den > 0) & (num > 0)
    num = jnp.where(ok, num, 1)
    den = jnp.where(ok, den, 1)
    ratio = num / den
    direct = x * ratio
    direct_ok = jnp.isfinite(ratio) & (ratio > 0) & jnp.isfinite(direct)
    big = jnp.log(jnp.finfo(x.dtype).max)
    logpath = jnp.sign(x) * jnp.exp(jnp.minimum(_log(jnp.abs(x)) + jnp.log(num) - jnp.log(den), big))
    return jnp.where(ok & (x != 0), jnp.where(direct_ok, direct, logpath), 0.0)


def _cnorm(a: jax.Array, C: jax.Array) -> jax.Array:
    """||sum_t a_t u_t|| = sqrt(a^T C a) for unit vectors u_t with cosines C, without squaring a's scale."""
    e = _pow2_exponent(jnp.max(jnp.abs(a)))
    ah = jnp.ldexp(a, -e)
    return jnp.ldexp(jnp.sqrt(jnp.maximum(ah @ (C @ ah), 0.0)), e)
