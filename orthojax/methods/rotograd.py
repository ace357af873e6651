"""RotoGrad (Javaloy & Valera, 2022): per-task rotations of the shared representation.

The encoder output z (channels last) is rotated per task over its first m channels (m = ``latent_size``;
the remaining channels pass unchanged): head k sees  z~_k = R_k z  (``z @ R_k^T`` on the channel axis), with
R_k frozen for the heads. R_k = B_k expm(K_k), K_k = tril(X_k, -1) - tril(X_k, -1)^T, with B_k a fixed rotation
(random by default) and X_k learnable, zero at the start, so R_k stays in SO(m). As in the package (geotorch's
``orthogonal(..., triv="expm")``), only the strict lower triangle of X_k is used (the rest gets zero gradient
and stays zero): a step on X_k moves K_k half as far as the same step did with the full parametrisation
K = A - A^T of earlier orthojax versions, so the package's learning rates carry over unchanged.

One step, with h_k = dL_k/dz~_k (the head's gradient) and g_k = R_k^T h_k = dL_k/dz (un-rotated):

* reference  r = mean_k ( g_k ||mean_j g_j|| / ||g_k|| )  (the task gradients rescaled to a common norm);
* rotation loss per task  l_k(X_k) = sum over all entries of (R_k r - h_k)^2, divided by the batch size for
  representations with spatial axes (rank >= 3: the batch mean of the per-example squared norm); for (B, m)
  vectors the sum runs over the batch too. This is the package's reduction (its einsum over the last two axes
  of the (B, m) gradient sums the batch); r and h_k are held constant; one step of the rotations' own
  optimiser on dl_k/dX_k;
* the encoder's cotangent at z:
    - "rotate_only":    sum_k g_k;
    - "rotograd":       sum_k (g_k / n_k) C with n_k = ||g_k||, rho_k = n_k / n_k^0, alpha_k = rho_k /
      sum_j rho_j, C = sum_k alpha_k n_k; n_k^0 recorded at the first step and again at step
      ``burn_in_period`` (every task then reaches the encoder with the same magnitude C);
    - "rotograd_norm":  sum_k w_k g_k with GradNorm weights learned on the representation gradients, as the
      package's RotoGradNorm does: w = T softmax(v), v learnable (zero at the start);
      L_gn(v) = sum_k | w_k n_k - ||sum_j w_j g_j / T|| (L~_k / mean_j L~_j)^alpha |  with L~_k = L_k / L_k^0
      (L_k^0 recorded like n_k^0), the target held constant. (The package computes RotoGrad's magnitude
      normalisation first and then discards it; so does this implementation, which uses the GradNorm
      weights only.)

The heads and every other parameter receive the plain gradient of sum_k L_k.

Numerics (deliberate differences from the package, which agree with it for gradients of ordinary size): the
norms are computed on vectors rescaled by a power of two and floored at the dtype's smallest normal number
(the package: 1e-15), so n_k, r, the weights and the cosines are correct for representation gradients from
about 1e-30 to 1e30 in float32 (the package's floor changes the result once a norm drops below ~1e-13). The
rotation loss and its gradient are computed on r and h_k divided by a common power of two and multiplied
back, so they are exact wherever the true value is representable; both grow like the square of the
representation gradients and saturate to +-inf beyond float32's range (gradients beyond ~1e19): the
"rotation_loss" metric then reads inf. An update of the learnable parameters whose result is not finite
(SGD or Adam on such a gradient; Adam's second moment overflowing) is skipped: the rotations, weights and
their optimiser state are kept (a sign-based optimiser still moves correctly). The floating state follows
the parameters' dtype (float64 under x64).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import expm

from orthojax.methods.base import check_positive as _check_positive, Method, MethodStep, MultiTaskProblem
from orthojax.methods.gradnorm import copy_leaves, keep_finite_update, param_dtype, power_of_two_scale, safe_norm
from orthojax.methods.registry import RunContext, register

PyTree = Any

__all__ = [
    "RotoGradState", "evaluate_rotated", "rotate_only", "rotate_representations", "rotograd", "rotograd_norm",
    "rotation_matrices",
]

_VARIANTS = ("rotate_only", "rotograd", "rotograd_norm")


class RotoGradState(NamedTuple):
    """State of the RotoGrad methods.

    Attributes:
      learnable: {"skew": (T, m, m) the X_k, of which only the strict lower triangle is used}
        (+ {"log_weights": (T,)} for rotograd_norm).
      base: (T, m, m) the fixed rotations B_k.
      opt_state: optax state of ``learnable``'s optimiser.
      initial_norms: (T,) n_k^0.
      initial_losses: (T,) L_k^0 (used by rotograd_norm).
      count: steps taken (int32 scalar).
    """

    learnable: dict
    base: jax.Array
    opt_state: Any
    initial_norms: jax.Array
    initial_losses: jax.Array
    count: jax.Array


def rotation_matrices(state: RotoGradState) -> jax.Array:
    """The (T, m, m) rotations R_k = B_k expm(tril(X_k, -1) - tril(X_k, -1)^T) of a RotoGrad state."""
    return _rotations(state.base, state.learnable["skew"])


def rotate_representations(state: RotoGradState, zs: Any) -> tuple:
    """The heads' inputs (R_k z_k for each task k): what a trained RotoGrad model decodes at evaluation.

    The heads were trained on rotated representations, so evaluation must decode
    ``problem.decode(params, rotate_representations(state, zs), extras, ...)`` with the method's state.

    Args:
      state: a RotoGrad state.
      zs: the T per-task representations from ``problem.encode`` (channels last).

    Returns:
      A tuple of T rotated representations.
    """
    zs = tuple(jax.tree.leaves(zs))
    if len(zs) != state.base.shape[0]:
        raise ValueError(f"expected {state.base.shape[0]} representations; got {len(zs)}")
    return _rotate_all(state.base, state.learnable["skew"], zs)


def evaluate_rotated(model: Any, variables: PyTree, state: RotoGradState, inputs: Any) -> tuple:
    """A RotoGrad model's evaluation: the heads decode the rotated representations R_k z_k.

    ``model`` is a Flax module with ``encode(x, train) -> (zs, extras)`` and ``decode(zs, extras, train) ->
    outputs``; it runs with ``train=False``. This is the methods' ``Method.evaluate``.

    Returns:
      The model's T outputs, as a tuple.
    """
    zs, extras = model.apply(variables, inputs, train=False, method="encode")
    zs = rotate_representations(state, zs)
    return tuple(model.apply(variables, zs, extras, train=False, method="decode"))


@jax.jit
def _rotate_all(base: jax.Array, skew: jax.Array, zs: tuple) -> tuple:
    return tuple(_rotate(z, r) for z, r in zip(zs, _rotations(base, skew)))


@jax.jit
def _rotations(base: jax.Array, skew: jax.Array) -> jax.Array:
    lower = jnp.tril(skew, -1)  # geotorch's Skew(lower=True): the strict lower triangle only
    return jnp.matmul(base, jax.vmap(expm)(lower - jnp.swapaxes(lower, -1, -2)))


def _rotate(z: jax.Array, rotation: jax.Array) -> jax.Array:
    """z @ R^T over the first m channels of the last axis; the other channels unchanged."""
    m = rotation.shape[-1]
    lo = jnp.einsum("...j,ij->...i", z[..., :m], rotation.astype(z.dtype))
    return jnp.concatenate([lo, z[..., m:]], axis=-1) if z.shape[-1] > m else lo


def _tiny(x: jax.Array) -> jax.Array:
    return jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


def _reduction(z: jax.Array) -> float:
    """The package's rotation-loss reduction factor: 1 (sum over the batch) for (B, m), 1 / B for maps."""
    return 1.0 if z.ndim <= 2 else 1.0 / z.shape[0]


def _random_rotations(seed: int, num_tasks: int, m: int) -> np.ndarray:  # float64
    """num_tasks Haar-random matrices of SO(m) (QR of a Gaussian with the sign fix, then det +1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_tasks):
        q, r = np.linalg.qr(rng.standard_normal((m, m)))
        q = q * np.sign(np.diagonal(r))[None, :]
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        out.append(q)
    return np.stack(out)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _build(
    variant: str,
    latent_size: int,
    burn_in_period: int,
    learning_rate: float,
    optimizer: Optional[optax.GradientTransformation],
    random_init: bool,
    seed: int,
    alpha: float,
) -> Method:
    m = _check_int(f"{variant}: latent_size", latent_size, 1)
    burn_in = _check_int(f"{variant}: burn_in_period", burn_in_period, 0)
    seed = _check_int(f"{variant}: seed", seed, 0)
    alpha = _check_positive(f"{variant}: alpha", alpha, allow_zero=True)
    if optimizer is None:
        optimizer = optax.adam(_check_positive(f"{variant}: learning_rate", learning_rate))
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{variant}: optimizer must be an optax.GradientTransformation; got {optimizer!r}")
    random_init = bool(random_init)

    def init(params: PyTree, num_tasks: int) -> RotoGradState:
        if num_tasks < 2:
            raise ValueError(f"{variant} needs at least 2 tasks; got {num_tasks}")
        dtype = param_dtype(params)
        if random_init:
            base = jnp.asarray(_random_rotations(seed, num_tasks, m), dtype)
        else:
            base = jnp.tile(jnp.eye(m, dtype=dtype), (num_tasks, 1, 1))
        learnable = {"skew": jnp.zeros((num_tasks, m, m), dtype)}
        if variant == "rotograd_norm":
            learnable["log_weights"] = jnp.zeros((num_tasks,), dtype)
        # every field its own buffer (a state whose fields share one cannot be donated to a compiled step)
        return RotoGradState(
            learnable, base, copy_leaves(optimizer.init(learnable)), jnp.ones((num_tasks,), dtype),
            jnp.ones((num_tasks,), dtype), jnp.zeros((), jnp.int32),
        )

    def step(
        problem: MultiTaskProblem, params: PyTree, state: RotoGradState, batch: Any, rng: jax.Array
    ) -> MethodStep:
        if problem.encode is None or problem.decode is None:
            raise ValueError(
                f"{variant} rotates the shared representation: the MultiTaskProblem needs encode(params, "
                "batch, rng) -> (zs, extras) and decode(params, zs, extras, batch, rng) -> (losses, aux)"
            )
        zs, encoder_pullback, extras = jax.vjp(lambda p: problem.encode(p, batch, rng), params, has_aux=True)
        z_leaves, z_tree = jax.tree.flatten(zs)
        num_tasks = state.base.shape[0]
        if len(z_leaves) != num_tasks:
            raise ValueError(
                f"{variant}: problem.encode must return one representation per task ({num_tasks}); "
                f"got {len(z_leaves)}"
            )
        for z in z_leaves:
            if z.shape[-1] < m:
                raise ValueError(f"{variant}: latent_size {m} exceeds the representation's {z.shape[-1]} channels")

        # one matrix exponential per step: its pullback carries the rotation loss back to the skew parameters
        rotations, rotations_pullback = jax.vjp(lambda a: _rotations(state.base, a), state.learnable["skew"])
        rotations = jax.lax.stop_gradient(rotations)
        rotated = [_rotate(z, r) for z, r in zip(z_leaves, rotations)]

        def decode(p, zt):
            out = problem.decode(p, jax.tree.unflatten(z_tree, zt), extras, batch, rng)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("problem.decode must return a pair (losses of shape (T,), aux)")
            losses, aux = out
            if jnp.ndim(losses) != 1 or losses.shape[0] != num_tasks:
                raise ValueError(f"problem.decode must return losses of shape ({num_tasks},); got {jnp.shape(losses)}")
            return losses, aux

        losses, decoder_pullback, aux = jax.vjp(decode, params, rotated, has_aux=True)
        # decode is separable (loss k reads zs[k] only), so one pullback gives every head gradient h_k
        head_grads, h = decoder_pullback(jnp.ones_like(losses))
        h = [jax.lax.stop_gradient(x) for x in h]
        g = [_rotate(hk, r.T) for hk, r in zip(h, rotations)]  # back-rotated: dL_k/dz
        norms = jnp.stack([jnp.maximum(safe_norm(gk), _tiny(gk)) for gk in g])

        mean_norm = safe_norm(sum(g) / num_tasks)
        reference = sum(gk * (mean_norm / nk) for gk, nk in zip(g, norms)) / num_tasks

        first = jnp.logical_or(state.count == 0, state.count == burn_in)
        initial_norms = jnp.where(first, norms, state.initial_norms.astype(norms.dtype))
        initial_losses = jnp.where(first, losses, state.initial_losses.astype(losses.dtype))

        # l_k = red * sum (R_k r - h_k)^2 is quadratic in the gradients: evaluated (with its gradient) on r and
        # h_k divided by a power of two s_k, then multiplied by s_k^2, it stays exact wherever representable
        top_r = jnp.max(jnp.abs(reference))
        s = jnp.stack([power_of_two_scale(jnp.maximum(top_r, jnp.max(jnp.abs(hk)))) for hk in h])
        r_scaled = [reference / sk for sk in s]
        h_scaled = [hk / sk for hk, sk in zip(h, s)]

        def rotation_loss(r_all):
            per_task = []
            for rk_ref, hk, rk in zip(r_scaled, h_scaled, r_all):
                diff = _rotate(rk_ref, rk) - hk
                per_task.append(_reduction(hk) * jnp.sum(diff * diff))
            return jnp.sum(jnp.stack(per_task)), jnp.stack(per_task)

        (_, rot_losses), rotation_grads = jax.value_and_grad(rotation_loss, has_aux=True)(rotations)
        (skew_grads,) = rotations_pullback(rotation_grads.astype(rotations.dtype))
        s_state = s.astype(skew_grads.dtype)[:, None, None]
        skew_grads = skew_grads * s_state * s_state  # (x s) s: a zero entry stays 0 even where s^2 overflows
        rot_losses = rot_losses * s.astype(rot_losses.dtype) * s.astype(rot_losses.dtype)
        learn_grads = {"skew": skew_grads}
        if variant == "rotograd_norm":
            w_now = num_tasks * jax.nn.softmax(state.learnable["log_weights"]).astype(norms.dtype)
            shared = safe_norm(sum(wk * gk for wk, gk in zip(w_now, g)) / num_tasks)
            ratios = losses / initial_losses
            target = jax.lax.stop_gradient(shared * (ratios / jnp.mean(ratios)) ** alpha)

            def gradnorm_loss(log_weights):
                w = num_tasks * jax.nn.softmax(log_weights).astype(norms.dtype)
                return jnp.sum(jnp.abs(w * norms - target))

            learn_grads["log_weights"] = jax.grad(gradnorm_loss)(state.learnable["log_weights"])
        updates, opt_state = optimizer.update(learn_grads, state.opt_state, state.learnable)
        learnable = optax.apply_updates(state.learnable, updates)
        learnable, opt_state = keep_finite_update((learnable, opt_state), (state.learnable, state.opt_state))

        if variant == "rotate_only":
            scales = jnp.ones_like(norms)
        elif variant == "rotograd":
            rho = norms / initial_norms
            alphas = rho / jnp.maximum(jnp.sum(rho), _tiny(rho))
            scales = jnp.sum(alphas * norms) / norms
        else:
            scales = num_tasks * jax.nn.softmax(state.learnable["log_weights"]).astype(norms.dtype)
        cotangents = [gk * s.astype(gk.dtype) for gk, s in zip(g, scales)]
        # zs may hold the same array T times (a fully shared encoder): vjp sums the T cotangents then
        (encoder_grads,) = encoder_pullback(jax.tree.unflatten(z_tree, cotangents))
        grads = jax.tree.map(jnp.add, encoder_grads, head_grads)

        unit_reference = reference / jnp.maximum(safe_norm(reference), _tiny(reference))
        cosines = jnp.stack([jnp.sum((gk / nk) * unit_reference) for gk, nk in zip(g, norms)])
        new_state = RotoGradState(
            learnable, state.base, opt_state, initial_norms.astype(state.initial_norms.dtype),
            initial_losses.astype(state.initial_losses.dtype), state.count + 1,
        )
        metrics = {
            "task_weights": scales,
            "grad_norms": norms,
            "encoder_grad_norms": scales * norms,
            "reference_cosine": cosines,
            "rotation_loss": rot_losses,
        }
        return MethodStep(grads, new_state, jnp.sum(losses), losses, aux, metrics)

    return Method(name=variant, init=init, step=step, evaluate=evaluate_rotated)


_ARGS_DOC = """
    Args:
      latent_size: m, the number of leading channels of the representation that are rotated (the
        representation's channel count to rotate all of them).
      burn_in_period: the step at which n_k^0 (and L_k^0) are recorded again (20 in the package).
      learning_rate: learning rate of the default optimiser of the rotations, ``optax.adam``; keep it
        smaller than the model's (the package README's advice; 5e-5 against 1e-4 in an NYUv2 script).
        The parametrisation and the rotation loss are the package's, so its learning rates carry over.
      optimizer: an optax transformation for the rotation parameters; overrides ``learning_rate``.
      random_init: B_k a random rotation (as the package) or the identity.
      seed: seed of the random B_k.
"""


def rotate_only(
    latent_size: int,
    *,
    burn_in_period: int = 20,
    learning_rate: float = 1e-4,
    optimizer: Optional[optax.GradientTransformation] = None,
    random_init: bool = True,
    seed: int = 0,
) -> Method:
    return _build("rotate_only", latent_size, burn_in_period, learning_rate, optimizer, random_init, seed, 0.0)


def rotograd(
    latent_size: int,
    *,
    burn_in_period: int = 20,
    learning_rate: float = 1e-4,
    optimizer: Optional[optax.GradientTransformation] = None,
    random_init: bool = True,
    seed: int = 0,
) -> Method:
    return _build("rotograd", latent_size, burn_in_period, learning_rate, optimizer, random_init, seed, 0.0)


def rotograd_norm(
    latent_size: int,
    *,
    alpha: float = 1.5,
    burn_in_period: int = 20,
    learning_rate: float = 1e-4,
    optimizer: Optional[optax.GradientTransformation] = None,
    random_init: bool = True,
    seed: int = 0,
) -> Method:
    return _build("rotograd_norm", latent_size, burn_in_period, learning_rate, optimizer, random_init, seed, alpha)


_REFS = """
    Returns:
      A :class:`~orthojax.methods.base.Method`. It needs ``problem.encode`` and ``problem.decode`` (a
      ValueError otherwise); decode must be separable (task k's loss reads ``zs[k]`` only). Metrics:
      "task_weights" (T,) the factor applied to each g_k, "grad_norms" (T,) n_k, "encoder_grad_norms" (T,)
      the norm of each task's contribution to the encoder's cotangent, "reference_cosine" (T,)
      cos(g_k, r), "rotation_loss" (T,).

    References:
      Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask Learning", ICLR 2022; the
      package rotograd 0.1.6 (RotateOnly, RotoGrad, RotoGradNorm). Chen et al., "GradNorm", ICML 2018.
"""

rotate_only.__doc__ = (
    "RotoGrad's rotations only: heads see R_k z, the encoder receives sum_k g_k (see the module doc).\n"
    + _ARGS_DOC + _REFS
)
rotograd.__doc__ = (
    "RotoGrad: rotations plus magnitude homogenisation; the encoder receives sum_k (g_k / n_k) C.\n"
    + _ARGS_DOC + _REFS
)
rotograd_norm.__doc__ = (
    "RotoGradNorm: rotations plus GradNorm weights on the representation gradients (sum_k w_k g_k).\n"
    + _ARGS_DOC
    + "      alpha: GradNorm's asymmetry for the weights (required in the package; 1.5 here as in GradNorm).\n"
    + _REFS
)


def _latent_size(context: RunContext) -> Optional[int]:
    """All channels of the model's shared representation."""
    return context.latent_size


def _learning_rate(context: RunContext) -> float:
    """Half the model's learning rate (the package's advice: the rotations learn slower than the model)."""
    return context.learning_rate / 2


_CONTEXT = {"latent_size": _latent_size, "learning_rate": _learning_rate}

register("rotate_only", rotate_only, label="Rotate only", aliases=("rotograd_only_rotation", "rotation_only"),
         context=_CONTEXT)
register("rotograd", rotograd, label="RotoGrad", aliases=("roto_grad",), context=_CONTEXT)
register("rotograd_norm", rotograd_norm, label="RotoGrad (normalised)", context=_CONTEXT)
