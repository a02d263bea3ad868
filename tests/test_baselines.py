"""Baselines: learning to reweight, Meta-Weight-Net and fixed mixing against direct computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    assert_trees_close,
    kd_loss_fn,
    make_batch,
    mlp_params,
    standard_promotion,
    val_ce,
)

import amal_jax
from amal_jax import baselines


def problem(seed=0):
    params = mlp_params(jax.random.key(seed), (3, 6, 3))
    train = make_batch(jax.random.key(seed + 1), 8)
    valid = make_batch(jax.random.key(seed + 2), 10, with_ids=False)
    return params, train, valid


def sgd_step(params, opt, opt_state, weights, batch):
    def mixed(p):
        return jnp.sum(weights * kd_loss_fn(p, batch)) / weights.shape[0]

    updates, opt_state = opt.update(jax.grad(mixed)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@pytest.mark.parametrize("seed", [0, 1])
def test_learning_to_reweight_matches_its_definition(seed):
    params, train, valid = problem(seed)
    opt = optax.sgd(0.3, momentum=0.9)
    cfg = baselines.learning_to_reweight(kd_loss_fn, val_ce, opt)
    state = amal_jax.init(cfg, params, key=jax.random.key(0))
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)

    hyper = amal_jax.hypergradient(
        kd_loss_fn,
        val_ce,
        params,
        jnp.zeros((8, 2)),
        train,
        valid,
        optimizer=opt,
        opt_state=state.opt_state,
        estimator="autodiff",
    )
    raw = np.maximum(-np.asarray(hyper), 0)
    assert raw.sum() > 0 and (raw == 0).any()  # some entries kept, some dropped
    weights = 8 * raw / raw.sum()
    expected, _ = sgd_step(params, opt, state.opt_state, weights, train)
    assert_trees_close(new_state.params, expected, F32)
    np.testing.assert_allclose(metrics["weight_mean"], weights.mean(0), **F32)
    assert int(new_state.step) == 1


def test_learning_to_reweight_with_no_helpful_example_does_not_move():
    params, train, valid = problem()
    # Identical rows and a validation loss of minus the training loss: every G_ik > 0.
    same = jax.tree.map(lambda x: jnp.repeat(x[:1], 8, axis=0), train)

    def anti_val(p, batch):
        return -jnp.mean(jnp.sum(kd_loss_fn(p, same), axis=1))

    cfg = baselines.learning_to_reweight(kd_loss_fn, anti_val, optax.sgd(0.3))
    state = amal_jax.init(cfg, params, key=jax.random.key(0))
    new_state, metrics = jax.jit(amal_jax.step)(state, same, valid)
    assert float(metrics["hypergradient_abs_mean"]) > 0
    assert float(jnp.max(metrics["weight_max"])) == 0.0
    assert_trees_close(new_state.params, params, F32)


def test_meta_weight_net_is_a_sigmoid_network_trained_through_the_lookahead():
    params, train, valid = problem()

    def ce_only(p, batch):
        return kd_loss_fn(p, batch)[:, :1]

    adam = standard_promotion(optax.adam(1e-3))  # the default meta-optimizer, under strict
    cfg = baselines.meta_weight_net(
        ce_only, val_ce, optax.sgd(0.3), hidden=(8,), meta_optimizer=adam
    )
    state = amal_jax.init(cfg, params, key=jax.random.key(0))
    weights0 = cfg.mixer.apply(state.mix_params, train, ce_only(params, train))
    np.testing.assert_allclose(weights0, 0.5, atol=0.05)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert bool(metrics["meta_updated"])
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), new_state.mix_params, state.mix_params
    )
    assert any(jax.tree.leaves(changed))
    assert 0 < float(metrics["weight_min"][0]) and float(metrics["weight_max"][0]) < 1


def test_fixed_mixing_is_a_plain_step_with_fixed_weights():
    params, train, valid = problem()
    opt = standard_promotion(optax.adam(1e-2))
    cfg = baselines.fixed_mixing(kd_loss_fn, val_ce, opt, (0.3, 0.7))
    state = amal_jax.init(cfg, params, key=jax.random.key(0))
    run = jax.jit(amal_jax.step)
    expected, opt_state = params, opt.init(params)
    for _ in range(3):
        state, metrics = run(state, train, valid)
        expected, opt_state = sgd_step(expected, opt, opt_state, jnp.array([0.3, 0.7]), train)
        assert not bool(metrics["meta_updated"])
    assert_trees_close(state.params, expected, F32)
    np.testing.assert_allclose(state.mix_params, [0.3, 0.7], **F32)


def test_baseline_errors():
    with pytest.raises(ValueError, match=r"optax\.GradientTransformation"):
        baselines.learning_to_reweight(kd_loss_fn, val_ce, None)
    with pytest.raises(ValueError, match="non-negative"):
        baselines.fixed_mixing(kd_loss_fn, val_ce, optax.sgd(0.1), (-1.0, 1.0))
    cfg = baselines.learning_to_reweight(kd_loss_fn, val_ce, optax.sgd(0.1))
    with pytest.raises(ValueError, match="ReweightConfig"):
        amal_jax.init("nope", {}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="stateful is False"):
        amal_jax.init(cfg, {}, key=jax.random.key(0), model_state={})
