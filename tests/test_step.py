"""The AMAL step: schedule, meta updates against the hypergradient, state handling, jit/vmap."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    TABLE_ROWS,
    BNNet,
    amal_config,
    assert_trees_close,
    assert_trees_equal,
    bn_losses,
    head_mask,
    kd_loss_fn,
    make_batch,
    mlp_apply,
    mlp_params,
    reference_hypergradient,
    setup_state,
    standard_promotion,
    val_ce,
)

import amal_jax

N = TABLE_ROWS  # training-set size for table mixers


config = amal_config
setup = setup_state


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_one_meta_step_is_sgd_on_the_hypergradient(estimator):
    """Table + SGD meta-optimizer: new rows = clamp(old rows - lr * G), G from hypergradient."""
    cfg = config(estimator=estimator, meta_optimizer=optax.sgd(50.0))
    state, train, valid = setup(cfg)
    weights, hyper = reference_hypergradient(state, train, valid)
    assert float(jnp.abs(hyper).max()) > 1e-4
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    expected_rows = np.clip(weights - 50.0 * hyper, 1e-7, 2 - 1e-7)
    np.testing.assert_allclose(new_state.mix_params[train["id"]], expected_rows, **F32)

    # The model update uses the new weights: compare with a plain optax step.
    def mixed(p):
        return jnp.sum(expected_rows * kd_loss_fn(p, train)) / train["x"].shape[0]

    updates, _ = cfg.optimizer.update(jax.grad(mixed)(state.params), state.opt_state, state.params)
    assert_trees_close(new_state.params, optax.apply_updates(state.params, updates), F32)
    assert bool(metrics["meta_updated"])
    np.testing.assert_allclose(metrics["weight_mean"], expected_rows.mean(0), **F32)
    np.testing.assert_allclose(
        metrics["loss"], jnp.sum(expected_rows * kd_loss_fn(state.params, train)) / 8, **F32
    )


def test_table_rows_outside_the_batch_never_change():
    # Adam meta-optimizer: a dense update would move every row through its moments.
    cfg = config(meta_optimizer=standard_promotion(optax.adam(0.1)), estimator="jvp")
    state, _, valid = setup(cfg)
    before = np.asarray(state.mix_params)
    touched = set()
    run = jax.jit(amal_jax.step)
    for i in range(4):
        batch = make_batch(jax.random.key(100 + i), 8, num_examples=N)
        touched.update(np.asarray(batch["id"]).tolist())
        state, _ = run(state, batch, valid)
    after = np.asarray(state.mix_params)
    untouched = sorted(set(range(N)) - touched)
    assert untouched, "the test needs rows that no batch used"
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert not np.allclose(after[sorted(touched)], before[sorted(touched)])


@pytest.mark.parametrize(
    "mixer",
    [
        amal_jax.table(N, 2, init=(1.0, 1.0)),
        amal_jax.global_weights(2, init=(1.0, 1.0)),
        amal_jax.network(2, hidden=(4,), init=(1.0, 1.0)),
    ],
    ids=["table", "global", "network"],
)
@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_zero_validation_gradient_leaves_mixer_unchanged(mixer, estimator):
    def flat_val(params, batch):
        return 0.0 * val_ce(params, batch) + 3.0

    cfg = config(mixer=mixer, val_loss_fn=flat_val, estimator=estimator, meta_steps=2)
    state, train, valid = setup(cfg)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert_trees_equal(new_state.mix_params, state.mix_params)
    assert float(metrics["hypergradient_abs_mean"]) == 0.0
    assert int(new_state.meta_step) == 1


def test_uniform_weights_reproduce_plain_training():
    """Weights (1, 0) that never move: the step is a plain optax step on cross-entropy."""
    cfg = config(
        mixer=amal_jax.global_weights(2, init=(1.0, 0.0), clamp=(0.0, 2.0)),
        meta_optimizer=optax.sgd(0.0),
    )
    state, train, valid = setup(cfg)
    new_state, _ = jax.jit(amal_jax.step)(state, train, valid)

    def ce(p):
        return jnp.mean(amal_jax.cross_entropy(mlp_apply(p, train["x"]), train["y"]))

    updates, opt_state = cfg.optimizer.update(jax.grad(ce)(state.params), state.opt_state)
    assert_trees_close(new_state.params, optax.apply_updates(state.params, updates), F32)
    assert_trees_close(new_state.opt_state, opt_state, F32)


def test_zero_auxiliary_loss_changes_nothing():
    """An all-zero auxiliary column: zero hypergradient for it, same model update as without."""

    def with_zero_aux(params, batch):
        return kd_loss_fn(params, batch).at[:, 1].set(0.0)

    cfg = config(loss_fn=with_zero_aux, estimator="jvp")
    state, train, valid = setup(cfg)
    new_state, _ = jax.jit(amal_jax.step)(state, train, valid)
    rows_before = state.mix_params[train["id"]]
    rows_after = new_state.mix_params[train["id"]]
    np.testing.assert_array_equal(rows_after[:, 1], rows_before[:, 1])
    assert not np.allclose(rows_after[:, 0], rows_before[:, 0])

    def ce_only(params, batch):
        return kd_loss_fn(params, batch)[:, :1]

    cfg1 = config(loss_fn=ce_only, estimator="jvp", mixer=amal_jax.table(N, 1, init=0.1))
    state1 = amal_jax.init(cfg1, state.params, key=state.key)
    new_state1, _ = jax.jit(amal_jax.step)(state1, train, valid)
    assert_trees_close(new_state1.params, new_state.params, F32)
    np.testing.assert_allclose(new_state1.mix_params[train["id"], 0], rows_after[:, 0], **F32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_the_batch_permutes_the_weights(seed):
    cfg = config(estimator="jvp", mixer=amal_jax.table(N, 2, init=(0.5, 0.5)))
    state, train, valid = setup(cfg, seed=seed)
    perm = np.random.default_rng(seed).permutation(8)
    permuted = jax.tree.map(lambda x: x[perm], train)
    a, _ = jax.jit(amal_jax.step)(state, train, valid)
    b, _ = jax.jit(amal_jax.step)(state, permuted, valid)
    np.testing.assert_allclose(a.mix_params, b.mix_params, **F32)
    assert_trees_close(a.params, b.params, F32)


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_step_compiles_once(estimator):
    cfg = config(estimator=estimator, warmup_steps=1, meta_every=2, meta_steps=2)
    state, _, _ = setup(cfg)
    chex.clear_trace_counter()
    traced = chex.assert_max_traces(lambda s, t, v: amal_jax.step(s, t, v), n=1)
    run = jax.jit(traced)
    for i in range(4):
        batch = make_batch(jax.random.key(10 + i), 8, num_examples=N)
        val = make_batch(jax.random.key(20 + i), 10, with_ids=False)
        state, _ = run(state, batch, val)
    assert int(state.step) == 4


def test_schedule_warmup_and_meta_every():
    cfg = config(warmup_steps=3, meta_every=2, estimator="jvp")
    state, train, valid = setup(cfg)
    run = jax.jit(amal_jax.step)
    flags = []
    for _ in range(9):
        state, metrics = run(state, train, valid)
        flags.append(bool(metrics["meta_updated"]))
        if not flags[-1]:
            assert np.isnan(float(metrics["val_loss_before"]))
    assert flags == [False, False, False, True, False, True, False, True, False]
    assert int(state.meta_step) == 3 and int(state.step) == 9


def test_meta_every_zero_never_meta_updates():
    cfg = config(meta_every=0)
    state, train, valid = setup(cfg)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert not bool(metrics["meta_updated"])
    assert_trees_equal(new_state.mix_params, state.mix_params)
    plain, _ = jax.jit(amal_jax.train_update)(state, train)
    assert_trees_close(new_state.params, plain.params, F32)


def test_meta_update_then_train_update_equals_step():
    cfg = config(estimator="jvp", meta_steps=3)
    state, train, valid = setup(cfg)
    via_step, _ = jax.jit(amal_jax.step)(state, train, valid)
    meta, meta_metrics = jax.jit(amal_jax.meta_update)(state, train, valid)
    assert int(meta.meta_step) == 1 and int(meta.step) == 0
    assert_trees_equal(meta.params, state.params)
    both, _ = jax.jit(amal_jax.train_update)(meta, train)
    assert_trees_close(both.mix_params, via_step.mix_params, F32)
    assert_trees_close(both.params, via_step.params, F32)
    assert np.isfinite(float(meta_metrics["val_loss_before"]))


def test_several_meta_steps_each_use_a_fresh_lookahead():
    cfg = config(meta_steps=2, meta_optimizer=optax.sgd(30.0))
    state, train, valid = setup(cfg)
    two, _ = jax.jit(amal_jax.meta_update)(state, train, valid)
    one_cfg = config(meta_steps=1, meta_optimizer=optax.sgd(30.0))
    one = state._replace(config=one_cfg)
    one, _ = jax.jit(amal_jax.meta_update)(one, train, valid)
    one, _ = jax.jit(amal_jax.meta_update)(one, train, valid)
    np.testing.assert_allclose(two.mix_params, one.mix_params, **F32)


@pytest.mark.parametrize(
    "mixer",
    [amal_jax.table(N, 2), amal_jax.network(2, hidden=(4,)), amal_jax.global_weights(2)],
    ids=["table", "network", "global"],
)
def test_jvp_step_equals_autodiff_step(mixer):
    cfg = config(mixer=mixer, meta_steps=2, track_val_after=True, estimator="autodiff")
    state, train, valid = setup(cfg)
    a, ma = jax.jit(amal_jax.step)(state, train, valid)
    b, mb = jax.jit(amal_jax.step)(
        state._replace(config=cfg.replace(estimator="jvp")), train, valid
    )
    assert_trees_close(a.mix_params, b.mix_params, F32)
    assert_trees_close(a.params, b.params, F32)
    assert_trees_close(ma, mb, F32)


def test_normalized_hypergradient():
    cfg = config(normalize_hypergradient=True, meta_optimizer=optax.sgd(0.01))
    state, train, valid = setup(cfg)
    weights, hyper = reference_hypergradient(state, train, valid)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    scale = jnp.mean(jnp.abs(hyper))
    np.testing.assert_allclose(metrics["hypergradient_abs_mean"], scale, **F32)
    expected = np.clip(weights - 0.01 * hyper / scale, 1e-7, 2 - 1e-7)
    np.testing.assert_allclose(new_state.mix_params[train["id"]], expected, **F32)


def test_track_val_after_is_the_lookahead_loss_with_new_weights():
    cfg = config(track_val_after=True, meta_optimizer=optax.sgd(100.0))
    state, train, valid = setup(cfg)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)

    def val_at(weights):
        def mixed(p):
            return jnp.sum(weights * kd_loss_fn(p, train)) / 8

        new, _ = amal_jax.lookahead(
            state.params, jax.grad(mixed)(state.params), cfg.optimizer, state.opt_state
        )
        return val_ce(new, valid)

    np.testing.assert_allclose(
        metrics["val_loss_before"], val_at(state.mix_params[train["id"]]), **F32
    )
    np.testing.assert_allclose(
        metrics["val_loss_after"], val_at(new_state.mix_params[train["id"]]), **F32
    )
    # A small step along minus the hypergradient lowers the look-ahead validation loss.
    assert float(metrics["val_loss_after"]) < float(metrics["val_loss_before"])


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_reuse_lookahead(estimator):
    cfg = config(estimator=estimator, reuse_lookahead=True)
    state, train, valid = setup(cfg)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, valid)
    old_weights = state.mix_params[train["id"]]

    def mixed(p):
        return jnp.sum(old_weights * kd_loss_fn(p, train)) / 8

    expected, expected_opt = amal_jax.lookahead(
        state.params, jax.grad(mixed)(state.params), cfg.optimizer, state.opt_state
    )
    assert_trees_close(new_state.params, expected, F32)
    assert_trees_close(new_state.opt_state, expected_opt, F32)
    assert not np.allclose(new_state.mix_params, state.mix_params)
    np.testing.assert_allclose(metrics["weight_mean"], old_weights.mean(0), **F32)


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_head_only_lookahead_in_step(estimator):
    cfg = config(estimator=estimator, lookahead_mask=head_mask)
    state, train, valid = setup(cfg)
    weights, hyper = reference_hypergradient(state, train, valid, lookahead_mask=head_mask)
    new_state, _ = jax.jit(amal_jax.step)(state, train, valid)
    expected = np.clip(weights - 10.0 * hyper, 1e-7, 2 - 1e-7)
    np.testing.assert_allclose(new_state.mix_params[train["id"]], expected, **F32)
    # The real update still trains the whole network.
    assert not np.allclose(new_state.params["layer_0"]["w"], state.params["layer_0"]["w"])


def test_remat_gives_the_same_step():
    cfg = config(estimator="jvp")
    state, train, valid = setup(cfg)
    a, _ = jax.jit(amal_jax.step)(state, train, valid)
    b, _ = jax.jit(amal_jax.step)(state._replace(config=cfg.replace(remat=True)), train, valid)
    assert_trees_close(a.params, b.params, F32)
    assert_trees_close(a.mix_params, b.mix_params, F32)


def test_vmap_over_independent_states_equals_separate_calls():
    cfg = config(estimator="jvp", warmup_steps=1)
    states, trains = [], []
    for seed in range(3):
        s, t, valid = setup(cfg, seed=seed)
        states.append(s)
        trains.append(t)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    batch = jax.tree.map(lambda *x: jnp.stack(x), *trains)
    run = jax.jit(jax.vmap(amal_jax.step, in_axes=(0, 0, None)))
    single = jax.jit(amal_jax.step)
    for _ in range(2):
        stacked, _ = run(stacked, batch, valid)
        states = [single(s, t, valid)[0] for s, t in zip(states, trains, strict=True)]
    for i, s in enumerate(states):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], stacked), s, F32)


# -- model state (BatchNorm) and dropout keys ---------------------------------------------------


def bn_setup(estimator="jvp", **kw):
    model = BNNet()
    key = jax.random.key(0)
    x = jax.random.normal(key, (8, 3))
    variables = model.init({"params": key, "dropout": key}, x, train=False)

    loss_fn, val_loss_fn = bn_losses(model)

    cfg = config(loss_fn=loss_fn, val_loss_fn=val_loss_fn, stateful=True, estimator=estimator, **kw)
    state = amal_jax.init(
        cfg,
        variables["params"],
        key=jax.random.key(5),
        model_state={"batch_stats": variables["batch_stats"]},
    )
    train = make_batch(jax.random.key(1), 8, num_examples=N)
    valid = make_batch(jax.random.key(2), 10, with_ids=False)
    return state, train, valid


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_batchnorm_statistics_untouched_by_lookahead(estimator):
    state, train, valid = bn_setup(estimator)
    meta, _ = jax.jit(amal_jax.meta_update)(state, train, valid)
    assert not np.allclose(meta.mix_params, state.mix_params)
    assert_trees_equal(meta.model_state, state.model_state)
    # In a full step the statistics change exactly as in the plain training forward pass.
    stepped, _ = jax.jit(amal_jax.step)(state, train, valid)
    plain, _ = jax.jit(amal_jax.train_update)(state, train)
    assert_trees_close(stepped.model_state, plain.model_state, F32)
    changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), stepped.model_state, state.model_state
    )
    assert all(jax.tree.leaves(changed))


def test_dropout_keys_come_from_the_state_key():
    state, train, valid = bn_setup(warmup_steps=100)
    run = jax.jit(amal_jax.step)
    a, _ = run(state, train, valid)
    b, _ = run(state, train, valid)
    assert_trees_equal(a.params, b.params)  # deterministic given the state
    other = state._replace(key=jax.random.key(6))
    c, _ = run(other, train, valid)
    assert not np.allclose(c.params["Dense_0"]["kernel"], a.params["Dense_0"]["kernel"])


# -- configuration ------------------------------------------------------------------------------


class TestConfigErrors:
    def test_bad_counts(self):
        with pytest.raises(ValueError, match="meta_steps must be an integer >= 1"):
            config(meta_steps=0)
        with pytest.raises(ValueError, match="meta_every must be an integer >= 0"):
            config(meta_every=-1)
        with pytest.raises(ValueError, match="warmup_steps"):
            config(warmup_steps=1.5)

    def test_bad_estimator(self):
        with pytest.raises(ValueError, match="estimator must be one of"):
            config(estimator="finite-differences")

    def test_bad_optimizer_and_mixer(self):
        with pytest.raises(ValueError, match="optimizer must be an optax"):
            config(optimizer=None)
        with pytest.raises(ValueError, match="mixer must be an amal_jax Mixer"):
            config(mixer=lambda w: w)

    def test_reuse_with_mask(self):
        with pytest.raises(ValueError, match="reuse_lookahead"):
            config(reuse_lookahead=True, lookahead_mask=head_mask)

    def test_mask_structure_checked_at_init(self):
        cfg = config(lookahead_mask={"head": True})
        with pytest.raises(ValueError, match="same tree structure"):
            setup(cfg)

    def test_model_state_without_stateful(self):
        with pytest.raises(ValueError, match="stateful is False"):
            amal_jax.init(config(), {"w": jnp.ones(2)}, key=jax.random.key(0), model_state={})

    def test_bad_key(self):
        with pytest.raises(ValueError, match="PRNG key"):
            amal_jax.init(config(), {"w": jnp.ones(2)}, key=3)

    def test_flags_must_be_bools(self):
        with pytest.raises(ValueError, match="remat must be a bool"):
            config(remat=1)

    def test_mask_pytree_is_made_hashable(self):
        params = mlp_params(jax.random.key(0), (3, 6, 3))
        cfg = config(lookahead_mask=head_mask(params))
        assert isinstance(cfg.lookahead_mask, amal_jax.LookaheadMask)
        hash(cfg)


def test_legacy_uint32_keys_are_accepted():
    cfg = config()
    params = mlp_params(jax.random.key(0), (3, 6, 3))
    state = amal_jax.init(cfg, params, key=jax.random.PRNGKey(0))
    assert jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key)


def test_paper_preset_and_schedule():
    cfg = amal_jax.paper_preset(
        kd_loss_fn,
        val_ce,
        optax.sgd(0.1, momentum=0.9, nesterov=True),
        num_examples=N,
        num_losses=2,
    )
    assert cfg.meta_steps == 5 and cfg.meta_every == 0 and cfg.warmup_steps == 0
    state, train, valid = setup(cfg)
    np.testing.assert_allclose(state.mix_params[0], [0.1, 0.9], **F32)
    weights, hyper = reference_hypergradient(state, train, valid)
    # First of the five meta steps is plain gradient descent with learning rate 1500.
    one = state._replace(config=cfg.replace(meta_steps=1))
    one, _ = jax.jit(amal_jax.meta_update)(one, train, valid)
    np.testing.assert_allclose(
        one.mix_params[train["id"]], np.clip(weights - 1500.0 * hyper, 1e-7, 2 - 1e-7), **F32
    )
    refresh = [e for e in range(60) if amal_jax.is_refresh_epoch(e)]
    assert refresh == [10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="epoch"):
        amal_jax.is_refresh_epoch(-1)


def test_init_copies_so_donation_keeps_the_callers_arrays():
    cfg = config()
    params = mlp_params(jax.random.key(0), (3, 6, 3))
    key = jax.random.key(1)
    state = amal_jax.init(cfg, params, key=key)
    train = make_batch(jax.random.key(2), 8, num_examples=N)
    valid = make_batch(jax.random.key(3), 10, with_ids=False)
    jax.jit(amal_jax.step, donate_argnums=0)(state, train, valid)
    # Still usable: a second state from the same arrays.
    again = amal_jax.init(cfg, params, key=key)
    assert float(jnp.sum(again.params["head"]["w"])) == float(jnp.sum(params["head"]["w"]))


def _live() -> tuple[int, int]:
    arrays = jax.live_arrays()
    return len(arrays), sum(a.nbytes for a in arrays)


def test_donating_step_keeps_live_buffers_flat():
    """``jax.jit(amal_jax.step, donate_argnums=0)``: each step's state replaces the last in
    its buffers, so 50 steps hold exactly as many arrays and bytes as one."""
    cfg = config()
    state, train, valid = setup(cfg)
    train, valid = jax.device_put((train, valid))
    step = jax.jit(amal_jax.step, donate_argnums=0)
    state, metrics = step(state, train, valid)  # compiles; init's copies are donated
    jax.block_until_ready(state)
    before = _live()
    for _ in range(50):
        old = jax.tree.leaves(state)
        state, metrics = step(state, train, valid)
        # Donated: the old state's buffers now belong to the new one.
        assert all(leaf.is_deleted() for leaf in old)
        del old
    jax.block_until_ready((state, metrics))
    assert _live() == before
    assert int(state.step) == 51 and bool(jnp.isfinite(metrics["loss"]))


def test_train_update_metrics_have_the_keys_of_step():
    cfg = config()
    state, train, valid = setup(cfg)
    _, step_metrics = jax.jit(amal_jax.step)(state, train, valid)
    _, train_metrics = jax.jit(amal_jax.train_update)(state, train)
    assert set(train_metrics) == set(step_metrics)
    assert not bool(train_metrics["meta_updated"])


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_static_meta_argument_matches_the_in_graph_schedule(estimator):
    cfg = config(estimator=estimator, warmup_steps=1, meta_every=2)
    state, train, valid = setup(cfg)
    scheduled = jax.jit(amal_jax.step)
    static = jax.jit(amal_jax.step, static_argnames="meta")
    a = b = state
    for i in range(4):
        a, ma = scheduled(a, train, valid)
        b, mb = static(b, train, valid, meta=amal_jax.is_meta_step(cfg, i))
        assert bool(ma["meta_updated"]) == bool(mb["meta_updated"]) == (i in (1, 3))
        assert_trees_close(a.params, b.params, F32)
        assert_trees_close(a.mix_params, b.mix_params, F32)
    forced, m = static(state, train, valid, meta=True)
    assert bool(m["meta_updated"]) and not np.allclose(forced.mix_params, state.mix_params)
    with pytest.raises(ValueError, match="meta must be None, True or False"):
        amal_jax.step(state, train, valid, meta=1)
    with pytest.raises(ValueError, match="step_count"):
        amal_jax.is_meta_step(cfg, -1)


def test_adam_without_eps_root_gives_the_hypergradient_of_a_tiny_eps_root():
    """A leaf with zero gradient and zero second moment: sqrt'(0) * 0 is taken as 0.

    With eps_root = 1e-30 the same leaf has a finite derivative sqrt'(1e-30) * 0 = 0, so the
    two steps must agree; before safe derivatives, eps_root = 0 gave NaN hypergradients.
    """

    def loss_fn(params, batch):
        # params["unused"] gets no gradient, so Adam's v for it stays exactly 0.
        return kd_loss_fn(params["net"], batch) + 0.0 * jnp.sum(params["unused"] ** 2)

    def val_fn(params, batch):
        return val_ce(params["net"], batch) + jnp.sum(params["unused"])

    params = {"net": mlp_params(jax.random.key(0), (3, 6, 3)), "unused": jnp.zeros(2)}
    train = make_batch(jax.random.key(1), 8, num_examples=N)
    valid = make_batch(jax.random.key(2), 10, with_ids=False)
    states = {}
    for eps_root in (0.0, 1e-30):
        cfg = config(
            loss_fn=loss_fn,
            val_loss_fn=val_fn,
            optimizer=standard_promotion(optax.adam(1e-2, eps_root=eps_root)),
        )
        state = amal_jax.init(cfg, params, key=jax.random.key(0))
        run = jax.jit(amal_jax.step)
        for _ in range(2):  # the second look-ahead starts from a non-zero Adam state
            state, metrics = run(state, train, valid)
            assert bool(metrics["hypergradient_finite"])
            assert not bool(metrics["meta_update_skipped"])
        states[eps_root] = state
    assert float(jnp.abs(states[0.0].mix_params - 0.1 * jnp.array([1.0, 9.0])).max()) > 1e-4
    assert_trees_close(states[0.0].mix_params, states[1e-30].mix_params, F32)
    assert_trees_close(states[0.0].params, states[1e-30].params, F32)


def test_mixed_precision_losses_with_an_in_graph_schedule():
    """bf16 losses, f32 validation loss, traced schedule: both cond branches must agree."""

    def bf16_losses(params, batch):
        return kd_loss_fn(params, batch).astype(jnp.bfloat16)

    cfg = config(loss_fn=bf16_losses, warmup_steps=1, meta_every=2)
    state, train, valid = setup(cfg)
    run = jax.jit(amal_jax.step)
    for _ in range(2):
        state, metrics = run(state, train, valid)
    assert metrics["val_loss_before"].dtype == jnp.float32
    assert bool(metrics["meta_updated"])


def test_warmup_without_meta_updates_is_rejected():
    with pytest.raises(ValueError, match="warmup_steps has no effect"):
        config(meta_every=0, warmup_steps=5)


def test_lookahead_accepts_a_pytree_mask_and_checks_it():
    params = mlp_params(jax.random.key(0), (3, 4, 2))
    grads = jax.tree.map(jnp.ones_like, params)
    opt = optax.sgd(0.5)
    new, _ = amal_jax.lookahead(params, grads, opt, opt.init(params), head_mask(params))
    assert_trees_close(new["layer_0"], params["layer_0"], F32)
    with pytest.raises(ValueError, match="same tree structure"):
        amal_jax.lookahead(params, grads, opt, opt.init(params), {"head": True})
