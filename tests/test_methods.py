"""Conformance: every method runs through the same ``init`` / ``step`` interface.

Each method (AMAL with its mixers and estimators, the paper preset, Meta-Weight-Net, a fixed
mix, learning to reweight) is built for the same small problem and put through ``jax.jit``
(with donation), ``jax.vmap`` over runs, the no-retrace check and the metric keys, as
optax's tests do for its transformations.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    TABLE_ROWS,
    assert_trees_close,
    kd_loss_fn,
    make_batch,
    mlp_params,
    standard_promotion,
    val_ce,
)

import amal_jax
from amal_jax import baselines, internal

OPT = optax.sgd(0.3, momentum=0.9)


def _amal(**kw):
    base = dict(
        loss_fn=kd_loss_fn,
        val_loss_fn=val_ce,
        optimizer=OPT,
        mixer=amal_jax.table(TABLE_ROWS, 2),
        meta_optimizer=optax.sgd(10.0),
    )
    base.update(kw)
    return amal_jax.AmalConfig(**base)


METHODS = {
    "amal_table_jvp": lambda: _amal(),
    "amal_table_autodiff": lambda: _amal(estimator="autodiff"),
    "amal_estimator_object": lambda: _amal(estimator=amal_jax.JVP(remat=True)),
    "amal_network": lambda: _amal(mixer=amal_jax.network(2, hidden=(4,))),
    "amal_global": lambda: _amal(mixer=amal_jax.global_weights(2)),
    "amal_trust": lambda: _amal(mixer=amal_jax.trust_table(TABLE_ROWS, 2, trust_init=(1.0, 0.5))),
    "amal_reuse_lookahead": lambda: _amal(reuse_lookahead=True),
    "paper_preset": lambda: amal_jax.paper_preset(
        kd_loss_fn, val_ce, OPT, num_examples=TABLE_ROWS, num_losses=2
    ),
    "meta_weight_net": lambda: baselines.meta_weight_net(
        kd_loss_fn,
        val_ce,
        OPT,
        num_losses=2,
        hidden=(4,),
        meta_optimizer=standard_promotion(optax.adam(1e-3)),  # the default, under strict
    ),
    "fixed_mixing": lambda: baselines.fixed_mixing(kd_loss_fn, val_ce, OPT, (0.5, 0.5)),
    "learning_to_reweight": lambda: baselines.learning_to_reweight(kd_loss_fn, val_ce, OPT),
}


def _batches(seed):
    train = make_batch(jax.random.key(seed), 8, num_examples=TABLE_ROWS)
    return train, make_batch(jax.random.key(seed + 100), 10, with_ids=False)


def _state(config, seed=0):
    params = mlp_params(jax.random.key(seed), (3, 6, 3))
    return amal_jax.init(config, params, key=jax.random.key(1000 + seed))


def _reference_keys():
    state = _state(_amal())
    _, metrics = jax.jit(amal_jax.step)(state, *_batches(1))
    return set(metrics)


@pytest.fixture(scope="module")
def reference_keys():
    return _reference_keys()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_one_step_interface(name, reference_keys):
    """jit with donation, no retrace for new data, the metric keys, the schedule, and vmap
    over runs that share the data (equal to the runs one by one)."""
    traces = []

    def counted_loss(params, batch):
        traces.append(1)  # runs at trace time only
        return kd_loss_fn(params, batch)

    config = dataclasses.replace(METHODS[name](), loss_fn=counted_loss)
    run = jax.jit(amal_jax.step, donate_argnums=0)
    train, valid = _batches(1)
    alone = []
    for seed in (0, 1):
        new, metrics = run(_state(config, seed), train, valid)
        alone.append(new)
    assert set(metrics) == reference_keys, name
    assert bool(metrics["meta_updated"]) == amal_jax.is_meta_step(config, 0)
    assert metrics["weight_mean"].shape == (2,)
    assert np.isfinite(float(metrics["loss"]))
    before = _state(config).params
    for leaf in jax.tree.leaves(alone[1].params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(alone[0].params), strict=True)
    ]
    assert any(moved), "every method trains the model"

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(_state(config, s) for s in (0, 1)))
    together, _ = jax.jit(jax.vmap(amal_jax.step, in_axes=(0, None, None)))(stacked, train, valid)
    for i, state in enumerate(alone):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], together.params), state.params, F32)

    after_first = len(traces)
    assert after_first > 0
    again, _ = run(alone[0], *_batches(2))  # donates alone[0]: the last use of it
    jax.block_until_ready(again)
    assert len(traces) == after_first, f"{name} retraced for new data of the same shapes"
    assert isinstance(again, amal_jax.AmalState) and int(again.step) == 2


def test_a_numpy_bool_is_a_static_meta():
    state, (train, valid) = _state(_amal()), _batches(1)
    run = jax.jit(amal_jax.step, static_argnames="meta")
    _, metrics = run(state, train, valid, meta=np.bool_(False))
    assert not bool(metrics["meta_updated"])
    with pytest.raises(ValueError, match="meta must be None, True or False"):
        amal_jax.step(state, train, valid, meta=1)


def test_a_method_without_meta_update_says_so():
    @dataclasses.dataclass(frozen=True)
    class NoMeta:
        stateful: bool = False

    jax.tree_util.register_pytree_node(NoMeta, lambda c: ((), c), lambda c, _: c)
    internal.register(NoMeta, internal.Engine(None, None, None, None, lambda c, n: False))
    state = amal_jax.AmalState(*([jnp.zeros((), jnp.int32)] * 4), *([None] * 6), NoMeta())
    with pytest.raises(ValueError, match="NoMeta has no meta_update"):
        amal_jax.meta_update(state, {}, {})
    with pytest.raises(ValueError, match="NoMeta has no train_update"):
        amal_jax.train_update(state, {})


def test_paper_preset_runs_its_own_schedule_of_meta_and_train_updates():
    config = METHODS["paper_preset"]()
    state, (train, valid) = _state(config), _batches(1)
    assert not amal_jax.is_meta_step(state, 0)  # the state's config, like check_batch
    refreshed, metrics = jax.jit(amal_jax.meta_update)(state, train, valid)
    assert int(refreshed.meta_step) == 1 and not bool(metrics["meta_update_skipped"])
    rows = np.asarray(train["id"])
    assert not np.allclose(refreshed.mix_params[rows], state.mix_params[rows])
    trained, metrics = jax.jit(amal_jax.train_update)(refreshed, train)
    assert int(trained.step) == 1 and not bool(metrics["meta_updated"])
    assert_trees_close(trained.mix_params, refreshed.mix_params, F32)


def test_learning_to_reweight_refuses_what_it_has_no_weights_for():
    config = METHODS["learning_to_reweight"]()
    state, (train, valid) = _state(config), _batches(1)
    with pytest.raises(ValueError, match="meta=False has no meaning"):
        amal_jax.step(state, train, valid, meta=False)
    with pytest.raises(ValueError, match="learning to reweight has none"):
        amal_jax.train_update(state, train)
    with pytest.raises(ValueError, match="learning to reweight has none"):
        amal_jax.meta_update(state, train, valid)
    assert state.mix_params is None and state.meta_opt_state is None


def test_unknown_configuration_names_the_methods():
    with pytest.raises(ValueError, match=r"AmalConfig.*ReweightConfig"):
        amal_jax.init(object(), {}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="AmalState"):
        amal_jax.step("not a state", {}, {})


def test_a_new_method_plugs_into_the_registry():
    @dataclasses.dataclass(frozen=True)
    class HalfConfig:
        """A toy method: plain SGD on half the summed losses, no meta update."""

        loss_fn: object
        val_loss_fn: object
        optimizer: object
        stateful: bool = False

    jax.tree_util.register_pytree_node(HalfConfig, lambda c: ((), c), lambda c, _: c)

    def init(config, params, key, model_state):
        params, model_state, key = internal.start(config, params, key, model_state)
        return amal_jax.AmalState(
            **internal.zero_counters(),
            params=params,
            model_state=model_state,
            opt_state=config.optimizer.init(params),
            mix_params=None,
            meta_opt_state=None,
            key=key,
            config=config,
        )

    def step(state, train, valid, meta):
        losses, vjp = jax.vjp(lambda p: state.config.loss_fn(p, train), state.params)
        weights = jnp.full_like(losses, 0.5)
        (grads,) = vjp(weights / losses.shape[0])
        updates, opt_state = state.config.optimizer.update(grads, state.opt_state)
        new = state._replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new, internal.weight_metrics(weights, losses)

    internal.register(
        HalfConfig,
        internal.Engine(
            init=init,
            step=step,
            meta_update=None,
            train_update=None,
            schedule=lambda config, count: False,
        ),
    )
    config = HalfConfig(kd_loss_fn, val_ce, optax.sgd(0.1))
    state = amal_jax.init(config, mlp_params(jax.random.key(0), (3, 6, 3)), key=jax.random.key(1))
    new, metrics = jax.jit(amal_jax.step)(state, *_batches(1))
    assert int(new.step) == 1
    np.testing.assert_allclose(np.asarray(metrics["weight_mean"]), [0.5, 0.5])
    assert amal_jax.is_meta_step(config, 3) is False


class _CountingJVP(amal_jax.JVP):
    """A user's estimator: the JVP identity, counting its hypergradient functions."""

    built: list = []  # noqa: RUF012  (shared on purpose: counts across instances)

    def hypergradient_fn(self, *args, **kw):
        self.built.append(1)
        return super().hypergradient_fn(*args, **kw)


def test_an_estimator_object_plugs_into_the_step():
    _CountingJVP.built.clear()
    mine = _amal(estimator=_CountingJVP())
    state, (train, valid) = _state(mine), _batches(1)
    ours, _ = jax.jit(amal_jax.step)(state, train, valid)
    assert _CountingJVP.built, "the step did not use the configured estimator"
    plain, _ = jax.jit(amal_jax.step)(_state(_amal()), train, valid)
    assert_trees_close(ours.mix_params, plain.mix_params, F32)
    assert_trees_close(ours.params, plain.params, F32)


def test_estimator_names_and_objects_resolve_to_the_same_strategy():
    assert _amal(estimator="jvp", remat=True).strategy == amal_jax.JVP(remat=True)
    assert _amal(estimator=amal_jax.JVP(remat=True)).strategy == amal_jax.JVP(remat=True)
    assert _amal(estimator=amal_jax.Autodiff(), remat=True).strategy == amal_jax.Autodiff(True)
    assert _amal().strategy == amal_jax.JVP()
    # Normalised: the same settings spelled two ways are one configuration (one jit cache).
    base = _amal()
    spelled = base.replace(estimator=amal_jax.JVP(remat=True))
    assert spelled == base.replace(remat=True) and spelled.remat is True
    assert hash(spelled) == hash(base.replace(remat=True))
    assert base.replace(estimator="autodiff").estimator == amal_jax.Autodiff()
    assert amal_jax.ESTIMATORS == ("autodiff", "jvp")
    with pytest.raises(ValueError, match="estimator must be one of"):
        _amal(estimator="finite-differences")
    with pytest.raises(ValueError, match="remat must be a bool"):
        amal_jax.JVP(remat=1)
    with pytest.raises(TypeError, match="abstract"):
        amal_jax.Estimator()  # a subclass implements linearize and hypergradient_fn


@pytest.mark.parametrize("estimator", [amal_jax.JVP(), amal_jax.Autodiff(remat=True)])
def test_hypergradient_takes_estimator_objects(estimator):
    params = mlp_params(jax.random.key(0), (3, 6, 3))
    train, valid = _batches(1)
    weights = jnp.ones((8, 2))
    by_name = amal_jax.hypergradient(
        kd_loss_fn, val_ce, params, weights, train, valid, optimizer=OPT, estimator=estimator.name
    )
    by_object = amal_jax.hypergradient(
        kd_loss_fn, val_ce, params, weights, train, valid, optimizer=OPT, estimator=estimator
    )
    assert_trees_close(by_object, by_name, F32)
