"""The hypergradient against float64 finite differences, closed forms and the JVP identity."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    F64,
    FD_RTOL,
    assert_trees_close,
    finite_differences,
    head_mask,
    kd_loss_fn,
    make_batch,
    mlp_apply,
    mlp_params,
    rel_err,
    standard_promotion,
    val_ce,
    x64,
)

import amal_jax


def optimizers():
    return {
        "sgd": optax.sgd(0.3),
        "momentum_wd": optax.chain(
            optax.add_decayed_weights(5e-2), optax.sgd(0.2, momentum=0.9, nesterov=True)
        ),
        "adam_eps_root": standard_promotion(optax.adam(0.05, eps_root=1e-8)),
        "sgd_schedule": optax.sgd(optax.exponential_decay(0.5, 1, 0.5)),
    }


def warm_opt_state(optimizer, params, key):
    """An optimizer state after two steps, so momentum/Adam moments/counts are non-trivial."""
    state = optimizer.init(params)
    for k in jax.random.split(key, 2):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(k, len(leaves))
        grads = jax.tree.unflatten(
            treedef,
            [jax.random.normal(kk, p.shape, p.dtype) for kk, p in zip(keys, leaves, strict=True)],
        )
        _, state = optimizer.update(grads, state, params)
    return state


def problem(dtype, seed=0, batch=4, val=6):
    key = jax.random.key(seed)
    kp, kb, kv, kw, ko = jax.random.split(key, 5)
    params = mlp_params(kp, (3, 5, 3), dtype)
    train = make_batch(kb, batch, dtype=dtype)
    valid = make_batch(kv, val, dtype=dtype)
    weights = jax.random.uniform(kw, (batch, 2), dtype, 0.2, 1.5)
    return params, train, valid, weights, ko


def kd_hypergradient(params, weights, train, valid, **kw):
    """``amal_jax.hypergradient`` of the test problem's losses (``kd_loss_fn``, ``val_ce``)."""
    return amal_jax.hypergradient(kd_loss_fn, val_ce, params, weights, train, valid, **kw)


def val_after_lookahead(params, weights, train, valid, optimizer, opt_state, mask=None):
    """Direct implementation of L_V(theta'(w)) with optax, for finite differences."""

    def mixed(p):
        return jnp.sum(weights * kd_loss_fn(p, train)) / weights.shape[0]

    grads = jax.grad(mixed)(params)
    if mask is not None:
        grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
    updates, _ = optimizer.update(grads, opt_state, params)
    if mask is not None:
        updates = jax.tree.map(lambda u, m: u if m else jnp.zeros_like(u), updates, mask)
    return val_ce(optax.apply_updates(params, updates), valid)


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
@pytest.mark.parametrize("opt_name", ["sgd", "momentum_wd", "adam_eps_root", "sgd_schedule"])
def test_matches_float64_finite_differences(float64, opt_name, estimator):
    params, train, valid, weights, ko = problem(jnp.float64)
    optimizer = optimizers()[opt_name]
    opt_state = warm_opt_state(optimizer, params, ko)
    hyper = kd_hypergradient(
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=opt_state,
        estimator=estimator,
    )
    assert hyper.shape == weights.shape and hyper.dtype == jnp.float64
    fd_fn = jax.jit(lambda w: val_after_lookahead(params, w, train, valid, optimizer, opt_state))
    fd = finite_differences(lambda w: float(fd_fn(w)), weights)
    assert np.linalg.norm(fd) > 1e-6  # the check is not vacuous
    assert rel_err(hyper, fd) < FD_RTOL


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_head_only_lookahead_matches_finite_differences(float64, estimator):
    params, train, valid, weights, ko = problem(jnp.float64, seed=3)
    optimizer = optimizers()["momentum_wd"]
    opt_state = warm_opt_state(optimizer, params, ko)
    mask = head_mask(params)
    hyper = kd_hypergradient(
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=opt_state,
        estimator=estimator,
        lookahead_mask=mask,
    )
    fd_fn = jax.jit(
        lambda w: val_after_lookahead(params, w, train, valid, optimizer, opt_state, mask)
    )
    fd = finite_differences(lambda w: float(fd_fn(w)), weights)
    assert rel_err(hyper, fd) < FD_RTOL
    full = kd_hypergradient(
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=opt_state,
        estimator=estimator,
    )
    assert rel_err(hyper, full) > 1e-3  # restricting the look-ahead really changes the answer


def test_closed_form_linear_regression(float64):
    """l_ik = (x_i . theta - y_ik)^2 / 2, SGD: G_ik = -(eta/B) r_ik x_i . grad L_V(theta')."""
    rng = np.random.default_rng(0)
    b, d, k, n_val, eta = 5, 3, 2, 7, 0.1
    x, y = rng.normal(size=(b, d)), rng.normal(size=(b, k))
    xv, yv = rng.normal(size=(n_val, d)), rng.normal(size=n_val)
    theta, w = rng.normal(size=d), rng.uniform(0.1, 2.0, size=(b, k))

    residual = (x @ theta)[:, None] - y  # [B, K]
    grad_train = (w * residual).sum(axis=1) @ x / b
    theta_new = theta - eta * grad_train
    grad_val = xv.T @ (xv @ theta_new - yv) / n_val
    expected = -(eta / b) * residual * (x @ grad_val)[:, None]

    def loss_fn(p, batch):
        return 0.5 * ((batch["x"] @ p)[:, None] - batch["y"]) ** 2

    def val_fn(p, batch):
        return 0.5 * jnp.mean((batch["x"] @ p - batch["y"]) ** 2)

    for estimator in amal_jax.ESTIMATORS:
        hyper = amal_jax.hypergradient(
            loss_fn,
            val_fn,
            jnp.asarray(theta),
            jnp.asarray(w),
            {"x": x, "y": y},
            {"x": xv, "y": yv},
            optimizer=optax.sgd(eta),
            estimator=estimator,
        )
        np.testing.assert_allclose(hyper, expected, **F64)


def test_sgd_identity_with_per_example_gradients(float64):
    """AMAL.md: G_ik = -(eta/B) <grad l_ik(theta), grad L_V(theta')> on an MLP."""
    params, train, valid, weights, _ = problem(jnp.float64, seed=5)
    eta = 0.3
    jac = jax.jacrev(kd_loss_fn)(params, train)  # leaves [B, K, ...]

    def mixed(p):
        return jnp.sum(weights * kd_loss_fn(p, train)) / weights.shape[0]

    new = jax.tree.map(lambda p, g: p - eta * g, params, jax.grad(mixed)(params))
    val_grad = jax.grad(val_ce)(new, valid)
    inner = sum(
        jnp.einsum("bk...,...->bk", j, v)
        for j, v in zip(jax.tree.leaves(jac), jax.tree.leaves(val_grad), strict=True)
    )
    expected = -(eta / weights.shape[0]) * inner
    for estimator in amal_jax.ESTIMATORS:
        hyper = kd_hypergradient(
            params,
            weights,
            train,
            valid,
            optimizer=optax.sgd(eta),
            estimator=estimator,
        )
        np.testing.assert_allclose(hyper, expected, **F64)


@pytest.mark.parametrize("opt_name", ["sgd", "momentum_wd", "adam_eps_root"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_jvp_equals_autodiff(opt_name, use_mask):
    for dtype, tol in ((jnp.float32, F32), (jnp.float64, F64)):
        with x64() if dtype == jnp.float64 else contextlib.nullcontext():
            params, train, valid, weights, ko = problem(dtype, seed=7)
            optimizer = optimizers()[opt_name]
            opt_state = warm_opt_state(optimizer, params, ko)
            mask = head_mask(params) if use_mask else None
            out = {
                est: kd_hypergradient(
                    params,
                    weights,
                    train,
                    valid,
                    optimizer=optimizer,
                    opt_state=opt_state,
                    estimator=est,
                    lookahead_mask=mask,
                )
                for est in amal_jax.ESTIMATORS
            }
            scale = float(jnp.max(jnp.abs(out["autodiff"])))
            np.testing.assert_allclose(
                out["jvp"], out["autodiff"], rtol=tol["rtol"], atol=tol["rtol"] * scale
            )


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_partial_lookahead_equals_full_when_head_is_the_only_parameter(estimator):
    params, train, valid, weights, _ = problem(jnp.float32, seed=11)
    body = {k: v for k, v in params.items() if k != "head"}
    head_only = {"head": params["head"]}

    def loss_head(p, batch):
        return kd_loss_fn({**body, **p}, batch)

    def val_head(p, batch):
        return val_ce({**body, **p}, batch)

    optimizer = optimizers()["adam_eps_root"]

    only = amal_jax.hypergradient(
        loss_head,
        val_head,
        head_only,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=optimizer.init(head_only),
        estimator=estimator,
    )
    masked_head_only = amal_jax.hypergradient(
        loss_head,
        val_head,
        head_only,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=optimizer.init(head_only),
        estimator=estimator,
        lookahead_mask={"head": {"b": True, "w": True}},
    )
    partial = kd_hypergradient(
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=optimizer.init(params),
        estimator=estimator,
        lookahead_mask=head_mask(params),
    )
    np.testing.assert_allclose(masked_head_only, only, **F32)
    np.testing.assert_allclose(partial, only, **F32)


def test_default_opt_state_is_optimizer_init():
    params, train, valid, weights, _ = problem(jnp.float32)
    optimizer = optimizers()["adam_eps_root"]
    a = amal_jax.hypergradient(
        kd_loss_fn, val_ce, params, weights, train, valid, optimizer=optimizer
    )
    b = kd_hypergradient(
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=optimizer.init(params),
    )
    np.testing.assert_array_equal(a, b)


def test_hypergradient_is_jittable():
    params, train, valid, weights, _ = problem(jnp.float32)
    fn = jax.jit(
        lambda p, w, t, v: amal_jax.hypergradient(
            kd_loss_fn, val_ce, p, w, t, v, optimizer=optax.sgd(0.1), estimator="jvp"
        )
    )
    eager = amal_jax.hypergradient(
        kd_loss_fn, val_ce, params, weights, train, valid, optimizer=optax.sgd(0.1)
    )
    np.testing.assert_allclose(fn(params, weights, train, valid), eager, **F32)


def test_lookahead_moves_only_masked_leaves():
    params = mlp_params(jax.random.key(0), (3, 4, 2))
    grads = jax.tree.map(jnp.ones_like, params)
    optimizer = optax.sgd(0.5)
    mask = amal_jax.LookaheadMask(head_mask(params))
    new, _ = amal_jax.lookahead(params, grads, optimizer, optimizer.init(params), mask)
    assert_trees_close(new["layer_0"], params["layer_0"], F32)
    assert_trees_close(new["head"], jax.tree.map(lambda p: p - 0.5, params["head"]), F32)


class TestErrors:
    def setup_method(self):
        self.params, self.train, self.valid, self.weights, _ = problem(jnp.float32)

    def call(self, **kw):
        args = dict(
            loss_fn=kd_loss_fn,
            val_loss_fn=val_ce,
            params=self.params,
            weights=self.weights,
            train_batch=self.train,
            val_batch=self.valid,
        )
        opts = {"optimizer": optax.sgd(0.1)}
        args.update({k: v for k, v in kw.items() if k in args})
        opts.update({k: v for k, v in kw.items() if k not in args})
        return amal_jax.hypergradient(
            args["loss_fn"],
            args["val_loss_fn"],
            args["params"],
            args["weights"],
            args["train_batch"],
            args["val_batch"],
            **opts,
        )

    def test_unknown_estimator(self):
        with pytest.raises(ValueError, match="estimator must be one of"):
            self.call(estimator="magic")

    def test_not_an_optimizer(self):
        with pytest.raises(ValueError, match=r"optax\.GradientTransformation"):
            self.call(optimizer=lambda g: g)

    @pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
    def test_weights_of_the_wrong_shape(self, estimator):
        with pytest.raises(ValueError, match="weights must have the shape"):
            self.call(weights=jnp.ones((4, 3)), estimator=estimator)

    @pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
    def test_loss_fn_not_a_matrix(self, estimator):
        with pytest.raises(ValueError, match=r"\[B, K\] matrix"):
            self.call(loss_fn=lambda p, b: kd_loss_fn(p, b)[:, 0], estimator=estimator)

    def test_integer_weights(self):
        with pytest.raises(ValueError, match="floating point"):
            self.call(weights=jnp.ones((4, 2), jnp.int32))

    def test_mask_with_wrong_structure(self):
        with pytest.raises(ValueError, match="same tree structure"):
            self.call(lookahead_mask={"head": True})

    def test_mask_with_non_bool_leaves(self):
        mask = jax.tree.map(lambda _: 1, self.params)
        with pytest.raises(ValueError, match="Python bools"):
            self.call(lookahead_mask=mask)

    def test_mask_all_false(self):
        mask = jax.tree.map(lambda _: False, self.params)
        with pytest.raises(ValueError, match="all False"):
            self.call(lookahead_mask=mask)


def test_apply_matches_reference_model():
    """Guard for the test helpers themselves: the MLP computes what it should."""
    params = mlp_params(jax.random.key(1), (3, 4, 2))
    x = jnp.ones((2, 3))
    hidden = jnp.tanh(x @ params["layer_0"]["w"] + params["layer_0"]["b"])
    np.testing.assert_allclose(
        mlp_apply(params, x), hidden @ params["head"]["w"] + params["head"]["b"], **F32
    )
