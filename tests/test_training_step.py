"""The compiled train step, the problem built from a Flax model, the non-finite guard and the eval step.

Oracles are written here from ``model.apply`` and ``jax.grad`` per task, never from the engine."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _training_common import (  # noqa: E402
    LAST_SHARED, TinyMTL, accuracy_metrics, compilation_cache, make_data, task_losses,
)

from orthojax.data.loader import iterate_batches  # noqa: E402
from orthojax.methods import get_method  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    with compilation_cache(str(tmp_path_factory.getbasetemp() / "training_jax_cache")):
        yield
from orthojax import training  # noqa: E402

LR = 0.1


def _setup(method_name="equal", use_bn=False, dropout=0.0, optimizer=None):
    model = TinyMTL(use_bn=use_bn, dropout=dropout)
    method = get_method(method_name, **({"alpha": 1.0} if method_name == "cosreg" else {}))
    optimizer = optax.sgd(LR) if optimizer is None else optimizer
    data = make_data(8)
    state = training.init_train_state(jax.random.key(0), model, method, optimizer, data["image"][:2])
    step = training.make_train_step(model, task_losses, method, optimizer, last_shared=LAST_SHARED)
    return model, state, jax.jit(step), {k: jnp.asarray(v) for k, v in data.items()}


def _oracle_task_grads(model, params, batch_stats, batch):
    """Per-task full gradients and the new BatchNorm statistics, from T separate jax.grad calls."""
    def loss_t(p, t):
        variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
        if batch_stats:
            out, upd = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        else:
            out, upd = model.apply(variables, batch["image"], train=True), {}
        return task_losses(out, batch)[t], upd.get("batch_stats", {})

    grads, stats = zip(*[jax.grad(loss_t, has_aux=True)(params, t) for t in range(2)])
    return grads, stats[0]


def _np_cosine(g1, g2):
    a, b = np.ravel(g1), np.ravel(g2)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_equal_step_matches_sgd_on_summed_loss_and_reports_cosine():
    model, state, step, batch = _setup("equal")
    grads, _ = _oracle_task_grads(model, state.params, {}, batch)
    total = jax.tree.map(lambda a, b: a + b, *grads)
    new, metrics = step(state, batch)
    expected = jax.tree.map(lambda p, g: p - LR * g, state.params, total)
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g1, g2 = (g["encoder"]["conv2"]["kernel"] for g in grads)
    c = _np_cosine(g1, g2)
    np.testing.assert_allclose(metrics["cosine"], [[1, c], [c, 1]], rtol=1e-4, atol=1e-5)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(total)])
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(flat), rtol=1e-5)
    np.testing.assert_allclose(metrics["task_weights"], [1.0, 1.0])
    assert int(new.step) == 1 and bool(metrics["finite"]) and "penalty" not in metrics


def test_cosreg_step_with_batchnorm_reports_exact_cosine_penalty_and_new_stats():
    model, state, step, batch = _setup("cosreg", use_bn=True)
    grads, stats = _oracle_task_grads(model, state.params, state.batch_stats, batch)
    new, metrics = step(state, batch)
    c = _np_cosine(*(g["encoder"]["conv2"]["kernel"] for g in grads))
    np.testing.assert_allclose(metrics["cosine"][0, 1], c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["penalty"], c**2, rtol=1e-4, atol=1e-6)
    for got, want in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(new.batch_stats)[0], jax.tree.leaves(state.batch_stats)[0])
    np.testing.assert_allclose(metrics["loss"], np.sum(metrics["task_losses"]) + metrics["penalty"], rtol=1e-5)


def test_step_key_depends_on_step_only():
    _, state, step, batch = _setup("equal", dropout=0.5)
    _, m1 = step(state, batch)
    _, m2 = step(state, batch)
    _, m3 = step(state.replace(step=jnp.asarray(5, jnp.int32)), batch)
    np.testing.assert_array_equal(m1["task_losses"], m2["task_losses"])
    assert not np.allclose(m1["task_losses"], m3["task_losses"])


def test_nonfinite_step_leaves_model_unchanged_and_is_counted():
    _, state, step, batch = _setup("cosreg", use_bn=True, optimizer=optax.adam(1e-2))
    bad = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(jnp.nan))
    after_bad, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    for field in ("params", "batch_stats", "opt_state", "method_state"):
        for got, want in zip(jax.tree.leaves(getattr(after_bad, field)), jax.tree.leaves(getattr(state, field))):
            np.testing.assert_array_equal(got, want)
    assert (int(after_bad.step), int(after_bad.nonfinite_total), int(after_bad.nonfinite_streak)) == (1, 1, 1)
    after_bad2, _ = step(after_bad, bad)
    assert int(after_bad2.nonfinite_streak) == 2
    good, metrics = step(after_bad2, batch)
    assert bool(metrics["finite"])
    assert (int(good.nonfinite_total), int(good.nonfinite_streak)) == (2, 0)
    assert not np.allclose(jax.tree.leaves(good.params)[0], jax.tree.leaves(state.params)[0])


def test_check_streak_message():
    training.check_streak(2, 3, step=10)
    training.check_streak(99, 0, step=10)
    with pytest.raises(training.NonFiniteError, match="3 consecutive steps"):
        training.check_streak(3, 3, step=10)


def test_problem_encode_decode_reproduces_task_losses_with_bn_and_dropout():
    model = TinyMTL(use_bn=True, dropout=0.5)
    data = make_data(8)
    state = training.init_train_state(jax.random.key(1), model, get_method("equal"), optax.sgd(0.1), data["image"])
    problem = training.make_problem(model, task_losses, state.batch_stats, last_shared=LAST_SHARED)
    rng = jax.random.key(3)
    losses, stats = problem.task_losses(state.params, data, rng)
    zs, extras = problem.encode(state.params, data, rng)
    losses2, stats2 = problem.decode(state.params, zs, extras, data, rng)
    np.testing.assert_allclose(losses, losses2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats2)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_eval_step_is_exact_over_uneven_batches():
    model = TinyMTL(use_bn=True)
    train, test = make_data(8), make_data(23, seed=5)
    state = training.init_train_state(jax.random.key(2), model, get_method("equal"), optax.sgd(0.1), train["image"])
    metrics = accuracy_metrics()
    eval_step = jax.jit(training.make_eval_step(model, metrics))
    acc = metrics.init()
    for batch in iterate_batches(test, 5, 0, 0, drop_last=False, shuffle=False):
        acc = eval_step(state, acc, batch)
    result = metrics.finalize(jax.device_get(acc))
    outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats}, test["image"], train=False)
    expected = [int(np.sum(np.argmax(np.asarray(o), -1) == test["labels"][:, t])) / 23 for t, o in enumerate(outputs)]
    assert result["count"] == 23
    np.testing.assert_allclose(result["accuracy"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("use_bn", [False, True])
def test_cosreg_implementations_give_the_same_step(use_bn):
    """auto (split over encode/decode), fast and reference: the same gradient, metrics and BN statistics."""
    model = TinyMTL(use_bn=use_bn)
    optimizer = optax.sgd(LR)
    data = {k: jnp.asarray(v) for k, v in make_data(8).items()}
    outs = {}
    for implementation in ("auto", "fast", "reference"):
        method = get_method("cosreg", alpha=1.0, implementation=implementation)
        state = training.init_train_state(jax.random.key(0), model, method, optimizer, data["image"][:2])
        step = jax.jit(training.make_train_step(model, task_losses, method, optimizer, last_shared=LAST_SHARED))
        outs[implementation] = step(state, data)
    ref_state, ref_metrics = outs.pop("reference")
    for name, (state, metrics) in outs.items():
        for got, want in zip(jax.tree.leaves((state.params, state.batch_stats)),
                             jax.tree.leaves((ref_state.params, ref_state.batch_stats))):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=name)
        for key in ("loss", "cosine", "penalty", "grad_norm"):
            np.testing.assert_allclose(np.asarray(metrics[key]), np.asarray(ref_metrics[key]), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{name} {key}")


def test_cosine_every_skips_the_diagnostic_jacobian_between_multiples():
    model, state, every_step, data = _setup("equal")
    step = jax.jit(training.make_train_step(model, task_losses, get_method("equal"), optax.sgd(LR),
                                            last_shared=LAST_SHARED, cosine_every=2))
    want_state, want = every_step(state, data)
    got_state, got = step(state, data)  # step 0: computed
    np.testing.assert_allclose(np.asarray(got["cosine"]), np.asarray(want["cosine"]), rtol=1e-6)
    _, skipped = step(got_state, data)  # step 1: skipped
    assert np.all(np.isnan(np.asarray(skipped["cosine"])))
    for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="cosine_every must be an int >= 1"):
        training.make_train_step(model, task_losses, get_method("equal"), optax.sgd(LR),
                                 last_shared=LAST_SHARED, cosine_every=0)
    with pytest.raises(ValueError, match="cosine_every"):
        training.TrainConfig(cosine_every=0)


def _output_sums(num_tasks=2, classes=None):
    """An accumulator of the summed model outputs per task: (T, C)."""
    from _training_common import NUM_CLASSES

    return training.EvalMetrics(
        init=lambda: jnp.zeros((num_tasks, classes or NUM_CLASSES)),
        update=lambda acc, outputs, batch: acc + jnp.stack([o.sum(0) for o in outputs]),
        finalize=lambda acc: {"sums": np.asarray(acc)},
    )


def test_eval_step_evaluates_as_the_method_says_also_vmapped_over_seeds():
    """RotoGrad's heads decode the rotated representations: the eval step takes that from the method, per
    seed when vmapped (each seed its own rotations), and the plain forward pass without a method."""
    from orthojax.methods.rotograd import rotate_representations

    model, data = TinyMTL(), make_data(6)
    method = get_method("rotograd", latent_size=2)
    metrics = _output_sums()
    keys = training.run_keys(0, 2)
    init = lambda key: training.init_train_state(key, model, method, optax.sgd(0.1), data["image"][:2])
    states = jax.jit(training.vmap_init(init, 2))(keys)
    # different rotations per seed (different method states), so that a mix-up would show
    states = states.replace(method_state=states.method_state._replace(
        base=states.method_state.base.at[1].set(jnp.flip(states.method_state.base[1], -1))))
    batch = {k: jnp.asarray(v) for k, v in data.items()}

    vmapped = jax.jit(training.vmap_eval_step(training.make_eval_step(model, metrics, method=method), 2))
    sums = vmapped(states, jnp.stack([metrics.init()] * 2), batch)
    plain = jax.jit(training.make_eval_step(model, metrics))
    for s in range(2):
        state = jax.tree.map(lambda x, s=s: x[s], states)
        variables = {"params": state.params}
        zs, extras = model.apply(variables, batch["image"], train=False, method="encode")
        rotated = rotate_representations(state.method_state, zs)
        expected = np.stack([o.sum(0) for o in model.apply(variables, rotated, extras, train=False, method="decode")])
        np.testing.assert_allclose(sums[s], expected, rtol=1e-5, atol=1e-5)
        unrotated = plain(state, metrics.init(), batch)
        assert not np.allclose(unrotated, expected, atol=1e-3)  # the rotation matters on this model


def test_a_model_without_encode_decode_trains_with_cosreg_and_refuses_rotograd():
    """A user model with only ``__call__``: the problem has no encode / decode, CosReg's default takes its
    generic exact path (same step as implementation="fast"), and RotoGrad says it needs the split."""
    import flax.linen as nn

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            h = nn.tanh(nn.Dense(4, name="encoder")(x.reshape(x.shape[0], -1)))
            return nn.Dense(1, name="head0")(h)[:, 0], nn.Dense(1, name="head1")(h)[:, 0]

    def losses(outputs, batch):
        return jnp.stack([jnp.mean((outputs[t] - batch["y"][:, t]) ** 2) for t in range(2)])

    model = Plain()
    batch = {"image": jnp.linspace(-1, 1, 12).reshape(4, 3), "y": jnp.linspace(0, 1, 8).reshape(4, 2)}
    params = model.init(jax.random.key(0), batch["image"])["params"]
    problem = training.make_problem(model, losses, {}, last_shared="encoder", shared="encoder")
    assert problem.encode is None and problem.decode is None
    steps = [get_method("cosreg", alpha=1.0, implementation=impl).step(problem, params, (), batch, jax.random.key(1))
             for impl in ("auto", "fast")]
    for a, b in zip(jax.tree.leaves(steps[0].grads), jax.tree.leaves(steps[1].grads)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises((ValueError, TypeError), match="encode"):
        rotograd = get_method("rotograd", latent_size=4)
        rotograd.step(problem, params, rotograd.init(params, 2), batch, jax.random.key(1))
