"""orthojax without its engine: an aggregator and the CosReg loss in a plain optax loop.

    python examples/plain_optax.py                      # 300 steps of each loop
    python examples/plain_optax.py --aggregator mgda --alpha 10 --steps 100

Everything here is a pure function of plain dicts of arrays; no Flax, no orthojax training code:

* **an aggregator** (:mod:`orthojax.aggregators`): ``aggregate(jacobian, state=None, *, key=None) ->
  (direction, state)``. The Jacobian comes from ``jax.jacrev`` of the task losses: a pytree shaped like the
  parameters with a leading task axis T; the direction is shaped like the parameters and goes to optax as
  the gradient. Any aggregator factory works (``--aggregator upgrad|mgda|dualproj|imtl_g|cagrad|...``).
* **the CosReg loss** (:func:`orthojax.loss_with_cosreg`): sum_t L_t + alpha ||C - I||_F^2 / (T (T - 1)),
  C the cosines of the per-task gradients of the layer ``wrt`` selects; ``jax.grad`` of it is exact
  (differentiated through the per-task gradients).

Both loops train the same two-layer network on two regression tasks whose targets depend on directions at
120 degrees (their gradients on the shared layer partly disagree). The last line printed is JSON: the
final task losses of each loop and the last shared layer's gradient cosine after CosReg.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthojax import aggregators, loss_with_cosreg


def make_data(n, seed=0, dim=8):
    """x (n, dim), y (n, 2), float32: y_t = sin(2 x . w_t), unit w_1, w_2 at 120 degrees."""
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, 2)))[0]
    w = q @ np.array([[1.0, -0.5], [0.0, np.sqrt(0.75)]])
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.sin(2 * x @ w), jnp.float32)


def init_params(key, dim=8, width=16):
    k1, k2 = jax.random.split(key)
    return {"encoder": {"kernel": jax.random.normal(k1, (dim, width)) / np.sqrt(dim)},
            "heads": {"kernel": jax.random.normal(k2, (width, 2)) / np.sqrt(width)}}


def task_losses(params, x, y):                       # the task-loss contract: (T,) losses
    preds = jnp.tanh(x @ params["encoder"]["kernel"]) @ params["heads"]["kernel"]
    return jnp.mean((preds - y) ** 2, axis=0)


def train_aggregated(aggregate, params, x, y, steps, optimizer):
    @jax.jit
    def step(params, opt_state, agg_state, key):
        jacobian = jax.jacrev(task_losses)(params, x, y)              # leaves (T, ...)
        direction, agg_state = aggregate(jacobian, agg_state, key=key)  # leaves shaped like params
        updates, opt_state = optimizer.update(direction, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, agg_state

    opt_state, agg_state = optimizer.init(params), None
    for i in range(steps):   # a key per step: randomised aggregators (PCGrad, GradDrop, GradVac) need one
        params, opt_state, agg_state = step(params, opt_state, agg_state, jax.random.fold_in(jax.random.key(1), i))
    return params


def train_cosreg(alpha, params, x, y, steps, optimizer):
    @jax.jit
    def step(params, opt_state):
        (_, aux), grads = jax.value_and_grad(loss_with_cosreg, argnums=1, has_aux=True)(
            task_losses, params, x, y, wrt="encoder/kernel", alpha=alpha)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux.cosine

    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state, cosine = step(params, opt_state)
    return params, cosine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aggregator", default="upgrad", help="a factory of orthojax.aggregators")
    parser.add_argument("--alpha", type=float, default=1.0, help="CosReg penalty weight")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    try:                                             # a factory whose defaults build an Aggregator
        aggregate = getattr(aggregators, args.aggregator)() if args.aggregator in aggregators.__all__ else None
    except TypeError:                                # a helper such as gramian(jacobian)
        aggregate = None
    if not isinstance(aggregate, aggregators.Aggregator):
        parser.error(f"--aggregator {args.aggregator!r} is not an aggregator factory of orthojax.aggregators")

    x, y = make_data(512)
    params, optimizer = init_params(jax.random.key(0)), optax.adam(1e-2)
    aggregated = train_aggregated(aggregate, params, x, y, args.steps, optimizer)
    regularised, cosine = train_cosreg(args.alpha, params, x, y, args.steps, optimizer)
    report = {"aggregator": args.aggregator, "aggregated_losses": task_losses(aggregated, x, y).tolist(),
              "cosreg_losses": task_losses(regularised, x, y).tolist(), "cosreg_cosine": float(cosine[0, 1])}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
