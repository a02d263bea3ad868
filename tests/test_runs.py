"""Many runs in one program: init_runs / step_runs against separate runs, hyperparameters
per run, the static ``meta`` and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    TABLE_ROWS,
    amal_config,
    assert_trees_close,
    assert_trees_equal,
    kd_loss_fn,
    make_batch,
    mlp_params,
)

import amal_jax

SIZES = (3, 6, 3)
TRACES = []  # one entry each time the training loss is traced


def counting_loss(params, batch):
    TRACES.append(1)  # Python side effect: runs while tracing only
    return kd_loss_fn(params, batch)


# Shared by the tests, so that their jitted programs are compiled once.
CFG = amal_config(loss_fn=counting_loss)
MANY = jax.jit(amal_jax.step_runs, static_argnames="meta")
ONE = jax.jit(amal_jax.step, static_argnames="meta")


def data(seed=0):
    kb, kv = jax.random.split(jax.random.key(100 + seed))
    return make_batch(kb, 8, num_examples=TABLE_ROWS), make_batch(kv, 10, with_ids=False)


def init_params(key):
    return mlp_params(key, SIZES)


def run_i(states, i):
    return jax.tree.map(lambda x: x[i], states)


def three_runs():
    return amal_jax.init_runs(CFG, init_params, jax.random.split(jax.random.key(0), 3))


def test_runs_equal_separate_runs_on_shared_batches():
    keys = jax.random.split(jax.random.key(0), 3)
    states = three_runs()
    assert states.step.shape == (3,) and states.mix_params.shape == (3, TABLE_ROWS, 2)
    # Run i is the documented single-run init.
    separate = [amal_jax.init(CFG, init_params(jax.random.split(k)[0]), key=k) for k in keys]
    for i, s in enumerate(separate):
        assert_trees_close(run_i(states, i), s, F32)
    assert not np.allclose(states.params["head"]["w"][0], states.params["head"]["w"][1])

    for step in range(2):
        train, val = data(step)
        states, metrics = MANY(states, train, val, meta=True)
        separate = [ONE(s, train, val, meta=True)[0] for s in separate]
    assert metrics["loss"].shape == (3,) and metrics["weight_mean"].shape == (3, 2)
    for i, s in enumerate(separate):
        assert_trees_close(run_i(states, i), s, F32)
        assert int(s.step) == 2 and int(s.meta_step) == 2
    assert_trees_equal(states.key, jnp.stack([s.key for s in separate]))


def test_stacked_params_and_integer_seeds():
    cfg = CFG
    params = [init_params(jax.random.key(s)) for s in (5, 6)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *params)
    states = amal_jax.init_runs(cfg, stacked, [3, 4])
    for i, (p, seed) in enumerate(zip(params, (3, 4), strict=True)):
        assert_trees_equal(run_i(states, i), amal_jax.init(cfg, p, key=jax.random.key(seed)))


def test_per_run_learning_rates_with_inject_hyperparams():
    inject_sgd = optax.inject_hyperparams(optax.sgd)
    opt = inject_sgd(learning_rate=0.3, momentum=0.9)
    cfg = amal_config(optimizer=opt, meta_optimizer=inject_sgd(learning_rate=10.0))
    params = init_params(jax.random.key(1))
    meta_lrs = jnp.array([0.0, 5.0, 5.0])
    states = amal_jax.init_runs(
        cfg,
        lambda key: params,  # the same start in every run: only the learning rates differ
        [0, 0, 0],
        hyperparams={"learning_rate": jnp.array([0.3, 0.3, 0.0])},
        meta_hyperparams={"learning_rate": meta_lrs},
    )
    train, val = data()
    new, _ = jax.jit(amal_jax.step_runs)(states, train, val)
    np.testing.assert_array_equal(new.meta_opt_state.hyperparams["learning_rate"], meta_lrs)
    # Meta learning rate 0: the table stays; 5: run 1 is the run with meta lr 5 alone.
    np.testing.assert_array_equal(new.mix_params[0], states.mix_params[0])
    alone_cfg = amal_config(optimizer=opt, meta_optimizer=inject_sgd(learning_rate=5.0))
    alone, _ = jax.jit(amal_jax.step)(
        amal_jax.init(alone_cfg, params, key=jax.random.key(0)), train, val
    )
    assert not np.allclose(alone.mix_params, states.mix_params[1])
    assert_trees_close(run_i(new, 1).mix_params, alone.mix_params, F32)
    assert_trees_close(run_i(new, 1).params, alone.params, F32)
    # Model learning rate 0 (run 2): the parameters stay.
    assert_trees_equal(run_i(new, 2).params, params)
    assert not np.allclose(new.params["head"]["w"][1], params["head"]["w"])


def test_per_run_hyperparameters_need_inject_hyperparams_and_known_names():
    cfg = amal_config()  # plain optax.sgd: no hyperparameters in the state
    init = amal_jax.init_runs
    with pytest.raises(ValueError, match="inject_hyperparams"):
        init(cfg, init_params, [0, 1], meta_hyperparams={"learning_rate": [1.0, 2.0]})
    cfg = amal_config(meta_optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
    with pytest.raises(ValueError, match=r"'lr'.*learning_rate"):
        init(cfg, init_params, [0, 1], meta_hyperparams={"lr": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"one value per run, shape \(2,\)"):
        init(cfg, init_params, [0, 1], meta_hyperparams={"learning_rate": [1.0, 2.0, 3.0]})
    states = init(cfg, init_params, [0, 1], meta_hyperparams={"learning_rate": 0.5})
    np.testing.assert_array_equal(states.meta_opt_state.hyperparams["learning_rate"], [0.5, 0.5])


def test_static_meta_numpy_bools_and_no_retrace():
    states = three_runs()
    train, val = data()
    new, metrics = MANY(states, train, val, meta=True)
    traced = len(TRACES)
    new, metrics = MANY(new, *data(1), meta=True)  # new values, same shapes: no new trace
    assert len(TRACES) == traced
    assert new.meta_step.tolist() == [2, 2, 2] and metrics["meta_updated"].all()
    # A NumPy bool is a static meta too (a host-side schedule computed with numpy).
    after, metrics = MANY(new, train, val, meta=np.False_)
    assert after.meta_step.tolist() == [2, 2, 2] and not metrics["meta_updated"].any()
    np.testing.assert_array_equal(after.mix_params, new.mix_params)
    assert not np.allclose(after.params["head"]["w"], new.params["head"]["w"])
    shapes = jax.eval_shape(lambda s: amal_jax.step_runs(s, train, val, meta=np.True_), states)
    assert shapes[0].mix_params.shape == states.mix_params.shape
    for bad in (1, jnp.bool_(True), "yes"):
        with pytest.raises(ValueError, match="meta must be None, True or False"):
            amal_jax.step_runs(states, train, val, meta=bad)


def test_errors_name_the_problem():
    cfg = CFG
    train, val = data()
    state = amal_jax.init(cfg, init_params(jax.random.key(0)), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"a single run, for amal_jax\.step"):
        amal_jax.step_runs(state, train, val)
    with pytest.raises(ValueError, match=r"stacked states from amal_jax\.init_runs"):
        amal_jax.step_runs({"step": 0}, train, val)
    states = amal_jax.init_runs(cfg, init_params, [0, 1, 2])
    broken = states._replace(key=states.key[:2])
    with pytest.raises(ValueError, match=r"states.*key.*leading axis of 2, expected S = 3"):
        amal_jax.step_runs(broken, train, val)
    stacked = jax.tree.map(
        lambda *x: jnp.stack(x), init_params(jax.random.key(0)), init_params(jax.random.key(1))
    )
    with pytest.raises(
        ValueError,
        match=r"params\['head'\]\['b'\] has a leading axis of 2, "
        r"expected S = 3",
    ):
        amal_jax.init_runs(cfg, stacked, [0, 1, 2])
    with pytest.raises(ValueError, match="scalar"):
        amal_jax.init_runs(cfg, {"w": jnp.float32(0.0)}, [0, 1])
    for keys in (3, jax.random.key(0), jnp.zeros((2, 2), jnp.float32), []):
        with pytest.raises(ValueError, match="keys must be"):
            amal_jax.init_runs(cfg, init_params, keys)
    with pytest.raises(ValueError, match="model_state goes with stacked params"):
        amal_jax.init_runs(cfg, init_params, [0, 1], model_state={})
    with pytest.raises(ValueError, match="init_runs takes the configuration of an amal_jax method"):
        amal_jax.init_runs(None, init_params, [0, 1])
