"""Nothing goes silently wrong: safe derivatives, non-finite steps, bad ids, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    FD_RTOL,
    TABLE_ROWS,
    BNNet,
    amal_config,
    assert_trees_close,
    assert_trees_equal,
    finite_differences,
    kd_loss_fn,
    make_batch,
    mlp_apply,
    mlp_params,
    reference_hypergradient,
    rel_err,
    setup_state,
    standard_promotion,
    val_ce,
)

import amal_jax
from amal_jax import baselines

N = TABLE_ROWS  # training-set size for table mixers


def config(**kw):
    # A meta-optimizer with a state that a discarded update must leave as it was.
    return amal_config(**{"meta_optimizer": standard_promotion(optax.adam(0.05)), **kw})


setup = setup_state


def poison(batch, key, value=jnp.nan, row=0, col=0):
    """A copy of ``batch`` with one entry of leaf ``key`` set to ``value``."""
    return {**batch, key: batch[key].at[row, col].set(value)}


def all_finite(tree):
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


# -- 1. safe derivatives of the look-ahead -------------------------------------------------------


def adaptive_optimizers():
    """optax defaults (eps_root = 0 where it exists), and chains with clipping."""
    return {
        "adam": standard_promotion(optax.adam(0.05)),
        "adamw": standard_promotion(optax.adamw(0.05)),
        "rmsprop": optax.rmsprop(0.05),
        "adagrad": optax.adagrad(0.05),
        "clip_adamw": optax.chain(
            optax.clip_by_global_norm(1.0), standard_promotion(optax.adamw(0.05))
        ),
        "tight_clip_adam": optax.chain(
            optax.clip_by_global_norm(0.05), standard_promotion(optax.adam(0.05))
        ),
        "lion": optax.lion(0.05),
    }


def dead_unit_problem(dtype):
    """A net with a dead ReLU unit: the weight leaving it gets a gradient of exactly zero."""
    kp, kb, kv, kw = jax.random.split(jax.random.key(3), 4)
    params = {
        "net": mlp_params(kp, (3, 5, 3), dtype),
        "unit_in": jnp.ones(3, dtype),
        "unit_out": jnp.full((), 0.5, dtype),
    }

    def loss_fn(p, batch):
        unit = jax.nn.relu(batch["x"] @ p["unit_in"] - 10.0)  # 0 on these inputs: dead
        return kd_loss_fn(p["net"], batch) + (unit * p["unit_out"])[:, None]

    def val_fn(p, batch):
        return val_ce(p["net"], batch) + 0.1 * p["unit_out"]  # the dead unit moves L_V

    train = make_batch(kb, 4, dtype=dtype)
    valid = make_batch(kv, 6, dtype=dtype)
    weights = jax.random.uniform(kw, (4, 2), dtype, 0.2, 1.5)
    return params, loss_fn, val_fn, train, valid, weights


def warm_state(optimizer, loss_fn, params, train):
    """The optimizer state after two real steps: the dead unit's moments stay exactly 0."""
    state = optimizer.init(params)
    for _ in range(2):
        grads = jax.grad(lambda p: jnp.mean(loss_fn(p, train)))(params)
        _, state = optimizer.update(grads, state, params)
    return state


@pytest.mark.parametrize("name", list(adaptive_optimizers()))
def test_safe_derivatives_keep_the_update_values(name):
    optimizer = adaptive_optimizers()[name]
    params = {"a": jnp.array([0.0, 1.0, -2.0]), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([0.0, 0.5, -3.0]), "b": jnp.zeros(2)}
    state = optimizer.init(params)
    plain = jax.jit(optimizer.update)(grads, state, params)
    safe = jax.jit(amal_jax.safe_derivatives(optimizer).update)(grads, state, params)
    assert_trees_close(plain, safe, {"rtol": 1e-6, "atol": 0.0})  # the same ops, up to fusion


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
@pytest.mark.parametrize("name", list(adaptive_optimizers()))
def test_hypergradient_is_exact_and_finite_with_optimizer_defaults(float64, name, estimator):
    """A dead unit and eps_root = 0: optax's own derivative is NaN, ours matches float64 FD."""
    optimizer = adaptive_optimizers()[name]
    params, loss_fn, val_fn, train, valid, weights = dead_unit_problem(jnp.float64)
    opt_state = warm_state(optimizer, loss_fn, params, train)

    def val_after(w):
        grads = jax.grad(lambda p: jnp.sum(w * loss_fn(p, train)) / w.shape[0])(params)
        updates, _ = optimizer.update(grads, opt_state, params)
        return val_fn(optax.apply_updates(params, updates), valid)

    hyper = amal_jax.hypergradient(
        loss_fn,
        val_fn,
        params,
        weights,
        train,
        valid,
        optimizer=optimizer,
        opt_state=opt_state,
        estimator=estimator,
    )
    assert bool(jnp.all(jnp.isfinite(hyper)))
    if name == "lion":  # sign(.) has derivative 0 almost everywhere
        np.testing.assert_array_equal(np.asarray(hyper), 0.0)
        return
    naive = jax.grad(val_after)(weights)
    if name not in ("rmsprop", "adagrad"):  # these two keep their eps inside the square root
        assert not bool(jnp.all(jnp.isfinite(naive))), "the problem must break optax's derivative"
    fd = finite_differences(jax.jit(val_after), weights)
    assert rel_err(hyper, fd) < FD_RTOL


def test_safe_derivatives_reach_into_jit_and_cond():
    """A hand-made transformation: sqrt(g**2) inside a nested jit and a lax.cond branch."""

    def update(g, state, params=None):
        @jax.jit
        def inner(g):
            return jax.lax.cond(state > 0, lambda x: jnp.sqrt(x * x), lambda x: x, g)

        return inner(g) + g, state

    opt = optax.GradientTransformation(lambda p: jnp.ones(()), update)
    g = jnp.array([0.0, 2.0])

    def total(o, g):
        return jnp.sum(o.update(g, jnp.ones(()))[0])

    assert np.isnan(np.asarray(jax.grad(total, argnums=1)(opt, g))[0])
    safe = jax.grad(total, argnums=1)(amal_jax.safe_derivatives(opt), g)
    np.testing.assert_allclose(safe, [1.0, 2.0])  # d|g|/dg taken as 0 at g = 0, 1 elsewhere


def test_fresh_adam_state_gives_a_tiny_hypergradient_when_no_gradient_is_near_zero():
    """Documented: the first Adam update is about -lr * sign(g), so G is of order lr * eps
    (here no entry of the mixed gradient is near zero; the dead unit gives no contribution)."""
    params, loss_fn, val_fn, train, valid, weights = dead_unit_problem(jnp.float32)
    kw = dict(weights=weights, train_batch=train, val_batch=valid)
    adam = amal_jax.hypergradient(
        loss_fn, val_fn, params, optimizer=standard_promotion(optax.adam(1e-3)), **kw
    )
    sgd = amal_jax.hypergradient(loss_fn, val_fn, params, optimizer=optax.sgd(1e-3), **kw)
    assert bool(jnp.all(jnp.isfinite(adam)))
    assert float(jnp.abs(adam).max()) < 1e-7 < float(jnp.abs(sgd).max())


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_step_with_adamw_and_clipping_and_a_dead_unit_stays_finite(estimator):
    """The reported case: optax.chain(clip_by_global_norm, adamw(schedule)), one dead unit."""
    params, loss_fn, val_fn, train, valid, _ = dead_unit_problem(jnp.float32)
    train = make_batch(jax.random.key(7), 8, num_examples=N)
    schedule = optax.cosine_decay_schedule(0.01, 100)
    cfg = config(
        loss_fn=loss_fn,
        val_loss_fn=val_fn,
        optimizer=optax.chain(
            optax.clip_by_global_norm(1.0), standard_promotion(optax.adamw(schedule))
        ),
        estimator=estimator,
    )
    state = amal_jax.init(cfg, params, key=jax.random.key(0))
    run = jax.jit(amal_jax.step)
    for _ in range(3):
        state, metrics = run(state, train, valid)
        assert bool(metrics["hypergradient_finite"])
    assert int(state.skipped_meta_updates) == 0
    assert all_finite(state)
    assert float(jnp.abs(state.mix_params[train["id"]] - jnp.array([0.1, 0.9])).max()) > 1e-3


# -- 2. non-finite steps are discarded and counted ------------------------------------------------


def step_variants():
    """Every way to run a step: static schedule, in-graph schedule, the two halves."""
    return ["step", "step_cond", "step_meta_false", "meta_update", "train_update"]


def run_variant(variant, cfg_kw, state_fn=None):
    cfg = config(
        **cfg_kw, **({"warmup_steps": 1, "meta_every": 1} if variant == "step_cond" else {})
    )
    state, train, valid = setup(cfg)
    if variant == "step_cond":  # step 1 of warm-up 1: the lax.cond takes the meta branch
        state = state._replace(step=jnp.ones((), jnp.int32))
    fns = {
        "step": lambda s, t, v: amal_jax.step(s, t, v),
        "step_cond": lambda s, t, v: amal_jax.step(s, t, v),
        "step_meta_false": lambda s, t, v: amal_jax.step(s, t, v, meta=False),
        "meta_update": amal_jax.meta_update,
        "train_update": lambda s, t, v: amal_jax.train_update(s, t),
    }
    return state, train, valid, jax.jit(fns[variant])


@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
@pytest.mark.parametrize("where", ["val_x", "train_x", "teacher"])
@pytest.mark.parametrize("variant", step_variants())
def test_a_non_finite_update_is_discarded_and_counted(variant, where, estimator):
    state, train, valid, run = run_variant(variant, {"estimator": estimator})
    value = jnp.inf if where == "teacher" else jnp.nan
    if where == "val_x":
        valid = poison(valid, "x", value)
    else:
        train = poison(train, "x" if where == "train_x" else "teacher", value, row=3)
    new, metrics = run(state, train, valid)
    assert all_finite(new)
    does_meta = variant in ("step", "step_cond", "meta_update")
    does_train = variant != "meta_update"
    meta_skipped = does_meta  # every poison reaches the hypergradient
    train_skipped = does_train and where != "val_x"
    assert int(new.skipped_meta_updates) == int(meta_skipped)
    assert int(new.skipped_train_updates) == int(train_skipped)
    assert bool(metrics["meta_update_skipped"]) == meta_skipped
    assert int(metrics["skipped_meta_updates"]) == int(meta_skipped)
    if "train_update_skipped" in metrics:
        assert bool(metrics["train_update_skipped"]) == train_skipped
    assert int(new.step) == int(state.step) + int(does_train)
    if meta_skipped:
        assert_trees_equal(new.mix_params, state.mix_params)
        assert_trees_equal(new.meta_opt_state, state.meta_opt_state)
    if train_skipped:
        assert_trees_equal(new.params, state.params)
        assert_trees_equal(new.opt_state, state.opt_state)
    if does_train and not train_skipped:  # poisoned validation data: the model still trains
        plain, _ = jax.jit(amal_jax.train_update)(state, train)
        assert_trees_close(new.params, plain.params, F32)


def test_a_non_finite_step_keeps_batchnorm_statistics():
    model = BNNet()
    x = jnp.ones((2, 3))
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, False)

    def loss_fn(params, batch, model_state, key):
        logits, updates = model.apply(
            {"params": params, **model_state},
            batch["x"],
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        ce = amal_jax.cross_entropy(logits, batch["y"])
        return amal_jax.stack_losses(ce, amal_jax.kd_loss(logits, batch["teacher"])), updates

    def val_loss_fn(params, batch, model_state):
        logits = model.apply({"params": params, **model_state}, batch["x"], train=False)
        return jnp.mean(amal_jax.cross_entropy(logits, batch["y"]))

    cfg = config(loss_fn=loss_fn, val_loss_fn=val_loss_fn, stateful=True)
    state = amal_jax.init(
        cfg,
        variables["params"],
        key=jax.random.key(5),
        model_state={"batch_stats": variables["batch_stats"]},
    )
    train = poison(make_batch(jax.random.key(1), 8, num_examples=N), "x", jnp.nan, row=2)
    valid = make_batch(jax.random.key(2), 10, with_ids=False)
    new, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert bool(metrics["train_update_skipped"])
    assert_trees_equal(new.model_state, state.model_state)
    assert_trees_equal(new.params, state.params)
    assert all_finite(new)


def test_learning_to_reweight_discards_non_finite_steps():
    cfg = baselines.learning_to_reweight(kd_loss_fn, val_ce, optax.sgd(0.3))
    kp, kb, kv = jax.random.split(jax.random.key(0), 3)
    state = amal_jax.init(cfg, mlp_params(kp, (3, 6, 3)), key=jax.random.key(1))
    train, valid = make_batch(kb, 8), make_batch(kv, 10, with_ids=False)
    run = jax.jit(amal_jax.step)
    new, metrics = run(state, train, poison(valid, "x"))
    assert bool(metrics["meta_update_skipped"]) and bool(metrics["train_update_skipped"])
    assert_trees_equal(new.params, state.params)
    new, metrics = run(new, poison(train, "teacher", row=1), valid)
    assert int(new.skipped_train_updates) == 2 and all_finite(new)
    new, metrics = run(new, train, valid)
    assert not bool(metrics["train_update_skipped"])
    assert not np.allclose(new.params["head"]["w"], state.params["head"]["w"])


def test_fuzz_poisoned_batches_never_reach_the_state():
    """50 steps, NaN / inf injected at random: the state stays finite, the counters are exact."""
    cfg = config(mixer=amal_jax.table(N, 2), meta_optimizer=optax.sgd(5.0))
    state, _, _ = setup(cfg)
    run = jax.jit(amal_jax.step)
    rng = np.random.default_rng(0)
    expected_meta = expected_train = 0
    for i in range(50):
        train = make_batch(jax.random.key(1000 + i), 8, num_examples=N)
        valid = make_batch(jax.random.key(2000 + i), 10, with_ids=False)
        train_poisoned = val_poisoned = False
        for leaf in ("x", "teacher", "val_x"):
            if rng.random() < 0.15:
                # (-inf is a legitimate teacher logit, a class ruled out: not a poison there)
                value = rng.choice([np.nan, np.inf] + ([-np.inf] if leaf != "teacher" else []))
                if leaf == "val_x":
                    r, c = rng.integers(10), rng.integers(3)
                    valid = poison(valid, "x", value, row=r, col=c)
                    val_poisoned = True
                else:
                    r, c = rng.integers(8), rng.integers(3)
                    train = poison(train, leaf, value, row=r, col=c)
                    train_poisoned = True
        expected_meta += int(train_poisoned or val_poisoned)
        expected_train += int(train_poisoned)
        state, metrics = run(state, train, valid)
        assert all_finite(state), f"step {i}"
        assert bool(metrics["meta_update_skipped"]) == (train_poisoned or val_poisoned), (
            i,
            train,
            valid,
        )
        assert int(state.skipped_meta_updates) == expected_meta, f"step {i}"
        assert int(state.skipped_train_updates) == expected_train, f"step {i}"
    assert 5 <= expected_meta < 50 and expected_train >= 3  # the fuzz exercised both paths
    assert int(state.step) == 50


# -- 3. example ids outside the table -------------------------------------------------------------


@pytest.mark.parametrize("constraint", ["clamp", "softplus"])
def test_out_of_range_ids_get_weight_zero_and_no_table_write(constraint):
    cfg = config(mixer=amal_jax.table(N, 2, constraint=constraint), meta_optimizer=optax.sgd(50.0))
    state, train, valid = setup(cfg)
    train = {**train, "id": train["id"].at[2].set(N).at[5].set(-3)}
    new, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert int(metrics["invalid_ids"]) == 2
    assert all_finite(new)
    valid_ids = np.delete(np.asarray(train["id"]), [2, 5])
    untouched = np.setdiff1d(np.arange(N), valid_ids)
    np.testing.assert_array_equal(new.mix_params[untouched], state.mix_params[untouched])
    assert not np.allclose(new.mix_params[valid_ids], state.mix_params[valid_ids])
    # The model update is a plain step with the new table rows and weight 0 for the bad rows.
    weights = cfg.mixer.apply(new.mix_params, train, jnp.zeros((8, 2)))
    np.testing.assert_array_equal(weights[jnp.array([2, 5])], 0.0)

    def mixed(p):
        return jnp.sum(weights * kd_loss_fn(p, train)) / 8

    updates, _ = cfg.optimizer.update(jax.grad(mixed)(state.params), state.opt_state, state.params)
    assert_trees_close(new.params, optax.apply_updates(state.params, updates), F32)


def test_check_ids_and_check_batch_name_the_offending_ids():
    with pytest.raises(ValueError, match=r"2 example ids are outside \[0, 10\): 10 \(position 1\)"):
        amal_jax.check_ids([3, 10, -1], 10)
    amal_jax.check_ids(np.arange(10), 10)
    cfg = config()
    state, train, valid = setup(cfg)
    amal_jax.check_batch(state, train, valid)
    with pytest.raises(ValueError, match=r"training batch: 1 example id is outside \[0, 64\): 70"):
        amal_jax.check_batch(cfg, {**train, "id": train["id"].at[4].set(70)})
    with pytest.raises(ValueError, match=r"validation batch: leaf \['x'\] has a non-finite value"):
        amal_jax.check_batch(cfg, train, poison(valid, "x", row=3))
    with pytest.raises(ValueError, match=r"leaf \['teacher'\].*index \(2, 0\)"):
        amal_jax.check_batch(cfg, poison(train, "teacher", jnp.inf, row=2))


def test_duplicated_ids_sum_their_hypergradients_into_one_row():
    cfg = config(meta_optimizer=optax.sgd(50.0))
    state, train, valid = setup(cfg)
    ids = train["id"].at[1].set(train["id"][0])  # rows 0 and 1 share one table row
    train = {**train, "id": ids}
    weights, hyper = reference_hypergradient(state, train, valid)
    new, _ = jax.jit(amal_jax.step)(state, train, valid)
    shared = np.clip(weights[0] - 50.0 * (hyper[0] + hyper[1]), 1e-7, 2 - 1e-7)
    np.testing.assert_allclose(new.mix_params[ids[0]], shared, **F32)
    others = np.clip(weights[2:] - 50.0 * hyper[2:], 1e-7, 2 - 1e-7)
    np.testing.assert_allclose(new.mix_params[ids[2:]], others, **F32)


# -- 7. errors that name the problem --------------------------------------------------------------


def test_empty_batches_are_named():
    state, train, valid = setup(config())
    empty_train = jax.tree.map(lambda x: x[:0], train)
    with pytest.raises(ValueError, match=r"the training batch is empty: its leaf \['id'\]"):
        amal_jax.step(state, empty_train, valid)
    with pytest.raises(ValueError, match="the validation batch is empty"):
        amal_jax.step(state, train, jax.tree.map(lambda x: x[:0], valid))
    with pytest.raises(ValueError, match="the validation batch is empty"):
        amal_jax.meta_update(state, train, jax.tree.map(lambda x: x[:0], valid))
    with pytest.raises(ValueError, match="the training batch is empty"):
        amal_jax.hypergradient(
            kd_loss_fn,
            val_ce,
            state.params,
            jnp.ones((0, 2)),
            empty_train,
            valid,
            optimizer=optax.sgd(0.1),
        )


@pytest.mark.parametrize(
    ("val_fn", "message"),
    [
        (lambda p, b: amal_jax.cross_entropy(mlp_apply(p, b["x"]), b["y"]), r"got shape \(10,\)"),
        (lambda p, b: (val_ce(p, b), 0.0), "returned a tuple of 2 values"),
        (lambda p, b: jnp.int32(1), "floating-point scalar"),
    ],
    ids=["per_example", "tuple", "integer"],
)
def test_val_loss_fn_must_return_a_scalar(val_fn, message):
    state, train, valid = setup(config(val_loss_fn=val_fn))
    with pytest.raises(ValueError, match=message):
        amal_jax.step(state, train, valid)


def test_errors_inside_user_functions_say_where_they_came_from():
    state, train, valid = setup(config())
    wide = {**valid, "x": jnp.ones((10, 5))}  # the model takes 3 features
    with pytest.raises(TypeError) as info:
        amal_jax.step(state, train, wide)
    assert "raised inside val_loss_fn(params, val_batch)" in "\n".join(info.value.__notes__)
    with pytest.raises(TypeError) as info:
        amal_jax.step(state, {**train, "x": jnp.ones((8, 5))}, valid)
    assert "raised inside loss_fn(params, train_batch)" in "\n".join(info.value.__notes__)


def test_loss_fn_outputs_are_checked():
    state, train, valid = setup(config(loss_fn=lambda p, b: (kd_loss_fn(p, b), None)))
    with pytest.raises(ValueError, match="loss_fn returned a tuple of 2 values"):
        amal_jax.step(state, train, valid)
    state, train, valid = setup(config(loss_fn=lambda p, b: jnp.ones((8, 2), jnp.int32)))
    with pytest.raises(ValueError, match="floating-point losses"):
        amal_jax.step(state, train, valid)
    stateful = config(
        loss_fn=lambda p, b, s, k: kd_loss_fn(p, b),
        stateful=True,
        val_loss_fn=lambda p, b, s: val_ce(p, b),
    )
    state, train, valid = setup(stateful)
    with pytest.raises(ValueError, match=r"stateful=True, loss_fn must return \(losses"):
        amal_jax.step(state, train, valid)


def test_integer_params_are_refused_with_their_path():
    params = {"w": jnp.ones((3, 3)), "count": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"params leaf \['count'\] has dtype int32"):
        amal_jax.init(config(), params, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"params leaf \['count'\]"):
        amal_jax.hypergradient(
            lambda p, b: jnp.ones((2, 1)),
            lambda p, b: 0.0,
            params,
            jnp.ones((2, 1)),
            None,
            None,
            optimizer=optax.sgd(0.1),
        )


@pytest.mark.parametrize("optimizer", [optax.lbfgs(), optax.polyak_sgd()], ids=["lbfgs", "polyak"])
def test_optimizers_that_need_extra_arguments_are_refused(optimizer):
    params = mlp_params(jax.random.key(0), (3, 6, 3))
    with pytest.raises(ValueError, match=r"optimizer\.update needs extra arguments: .*value"):
        amal_jax.init(config(optimizer=optimizer), params, key=jax.random.key(0))
    train, valid = make_batch(jax.random.key(1), 4), make_batch(jax.random.key(2), 4)
    with pytest.raises(ValueError, match="line search"):
        amal_jax.hypergradient(
            kd_loss_fn, val_ce, params, jnp.ones((4, 2)), train, valid, optimizer=optimizer
        )
    with pytest.raises(ValueError, match=r"optimizer\.update needs extra arguments"):
        amal_jax.init(
            baselines.learning_to_reweight(kd_loss_fn, val_ce, optimizer),
            params,
            key=jax.random.key(0),
        )


@pytest.mark.parametrize(
    "mixer",
    [amal_jax.network(3, hidden=(4,)), amal_jax.table(N, 3), amal_jax.global_weights(3)],
    ids=["network", "table", "global"],
)
def test_a_mixer_for_another_number_of_losses_is_named(mixer):
    state, train, valid = setup(config(mixer=mixer))
    with pytest.raises(ValueError, match=r"built for 3 loss columns but loss_fn returned 2"):
        amal_jax.step(state, train, valid)
    with pytest.raises(ValueError, match=r"loss_fn returned 2"):
        mixer.apply(state.mix_params, train, jnp.zeros((8, 2)))


def test_ids_of_the_wrong_length_are_named():
    state, train, valid = setup(config())
    with pytest.raises(ValueError, match=r"ids have length 5 but the batch has 8 rows"):
        amal_jax.step(state, {**train, "id": train["id"][:5]}, valid)


# -- 8. one meta learning rate, one step size -----------------------------------------------------


def test_normalized_meta_steps_are_the_same_size_for_table_and_global():
    """SGD meta step, equal starting weights: each global weight moves by the batch mean of
    the table rows' moves (before, it moved B times as far)."""
    init = (0.5, 0.5)
    moves = {}
    for name, mixer in [
        ("table", amal_jax.table(N, 2, init=init)),
        ("global", amal_jax.global_weights(2, init=init)),
    ]:
        cfg = config(mixer=mixer, meta_optimizer=optax.sgd(0.01), normalize_hypergradient=True)
        state, train, valid = setup(cfg)
        new, _ = jax.jit(amal_jax.meta_update)(state, train, valid)
        before = cfg.mixer.apply(state.mix_params, train, jnp.zeros((8, 2)))
        after = cfg.mixer.apply(new.mix_params, train, jnp.zeros((8, 2)))
        moves[name] = np.asarray(after - before)
    np.testing.assert_allclose(
        moves["global"][0], moves["table"].mean(axis=0), rtol=1e-4, atol=1e-9
    )
    assert np.abs(moves["table"]).mean() == pytest.approx(0.01, rel=1e-3)  # |G| normalised to 1


# -- 9 and properties: the table stays inside its clamp ------------------------------------------


@pytest.mark.parametrize("constraint", ["clamp", "softplus"])
@pytest.mark.parametrize(
    "mixer_fn",
    [amal_jax.table, lambda n, k, **kw: amal_jax.global_weights(k, **kw)],
    ids=["table", "global"],
)
def test_weights_stay_inside_the_clamp_at_any_meta_learning_rate(constraint, mixer_fn):
    lo, hi = 0.05, 1.5
    cfg = config(
        mixer=mixer_fn(N, 2, init=(0.1, 0.9), constraint=constraint, clamp=(lo, hi)),
        meta_optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=1.0),
    )
    state, _, valid = setup(cfg)
    run = jax.jit(amal_jax.step)
    rng = np.random.default_rng(0)
    seen_hi = seen_lo = False
    for i in range(12):
        lr = float(10.0 ** rng.uniform(-2, 8))
        hyper = state.meta_opt_state.hyperparams
        state = state._replace(
            meta_opt_state=state.meta_opt_state._replace(
                hyperparams={**hyper, "learning_rate": jnp.asarray(lr, jnp.float32)}
            )
        )
        batch = make_batch(jax.random.key(300 + i), 8, num_examples=N)
        state, _ = run(state, batch, valid)
        weights = np.asarray(
            cfg.mixer.apply(state.mix_params, {"id": jnp.arange(N)}, jnp.zeros((N, 2)))
        )
        assert weights.min() >= lo and weights.max() <= hi, (lr, weights.min(), weights.max())
        seen_hi |= bool(np.isclose(weights.max(), hi, rtol=1e-3))
        seen_lo |= bool(np.isclose(weights.min(), lo, rtol=1e-3))
    assert seen_hi and seen_lo  # large learning rates pushed weights onto both bounds


# -- properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_permuting_the_batch_permutes_the_hypergradient(seed, estimator):
    kp, kb, kv, kw = jax.random.split(jax.random.key(seed), 4)
    params = mlp_params(kp, (3, 5, 3))
    train, valid = make_batch(kb, 6), make_batch(kv, 7, with_ids=False)
    weights = jax.random.uniform(kw, (6, 2), minval=0.2, maxval=1.5)
    perm = np.random.default_rng(seed).permutation(6)
    opt = standard_promotion(optax.adam(0.05))
    kw = dict(optimizer=opt, estimator=estimator)
    a = amal_jax.hypergradient(kd_loss_fn, val_ce, params, weights, train, valid, **kw)
    b = amal_jax.hypergradient(
        kd_loss_fn,
        val_ce,
        params,
        weights[perm],
        jax.tree.map(lambda x: x[perm], train),
        valid,
        **kw,
    )
    np.testing.assert_allclose(b, a[perm], **F32)


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0, -2.0])
@pytest.mark.parametrize("estimator", amal_jax.ESTIMATORS)
def test_hypergradient_is_linear_in_the_validation_loss_scale(float64, scale, estimator):
    kp, kb, kv, kw = jax.random.split(jax.random.key(4), 4)
    params = mlp_params(kp, (3, 5, 3), jnp.float64)
    train, valid = make_batch(kb, 5, dtype=jnp.float64), make_batch(kv, 6, dtype=jnp.float64)
    weights = jax.random.uniform(kw, (5, 2), jnp.float64, 0.2, 1.5)
    kw = dict(optimizer=optax.sgd(0.3, momentum=0.9), estimator=estimator)
    base = amal_jax.hypergradient(kd_loss_fn, val_ce, params, weights, train, valid, **kw)
    scaled = amal_jax.hypergradient(
        kd_loss_fn, lambda p, b: scale * val_ce(p, b), params, weights, train, valid, **kw
    )
    np.testing.assert_allclose(scaled, scale * base, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_uniform_weights_reproduce_a_plain_optax_step(seed):
    """Weights fixed at 1: the step is optax on the plain mean of the summed losses."""
    cfg = baselines.fixed_mixing(
        kd_loss_fn, val_ce, standard_promotion(optax.adamw(0.01)), (1.0, 1.0)
    )
    state, train, valid = setup(cfg, seed=seed)
    new, metrics = jax.jit(amal_jax.step)(state, train, valid)

    def total(p):
        return jnp.mean(jnp.sum(kd_loss_fn(p, train), axis=1))

    updates, opt_state = cfg.optimizer.update(
        jax.grad(total)(state.params), state.opt_state, state.params
    )
    assert_trees_close(new.params, optax.apply_updates(state.params, updates), F32)
    assert_trees_close(new.opt_state, opt_state, F32)
    assert not bool(metrics["meta_updated"])


# -- from a new user's trial of bad inputs ---------------------------------------------------------


def test_duplicate_ids_are_counted_and_can_be_refused_on_the_host():
    state, train, valid = setup(config())
    ids = train["id"].at[1].set(train["id"][0]).at[2].set(train["id"][0]).at[5].set(N)
    _, metrics = jax.jit(amal_jax.step)(state, {**train, "id": ids}, valid)
    assert int(metrics["duplicate_ids"]) == 2 and int(metrics["invalid_ids"]) == 1
    amal_jax.check_ids([4, 4, 5], 10)  # allowed by default
    with pytest.raises(ValueError, match="1 example id occurs more than once in the batch: 4"):
        amal_jax.check_ids([4, 4, 5], 10, allow_duplicates=False)


def test_check_batch_checks_labels_when_told_where_they_are():
    state, train, valid = setup(config())
    amal_jax.check_batch(state, {**train, "y": train["y"].at[0].set(-1)}, valid, labels={"y": 3})
    with pytest.raises(ValueError, match=r"training batch: label 3 at y\[4\] is not \[0, 3\)"):
        amal_jax.check_batch(state, {**train, "y": train["y"].at[4].set(3)}, labels={"y": 3})
    with pytest.raises(ValueError, match=r"validation batch: label -1 at y\[2\] is not \[0, 3\)\."):
        amal_jax.check_batch(
            state, train, {**valid, "y": valid["y"].at[2].set(-1)}, labels={"y": 3}
        )
    with pytest.raises(ValueError, match="has no labels under 'label'"):
        amal_jax.check_batch(state, train, labels={"label": 3})


def test_misused_arguments_get_messages_that_say_what_to_pass():
    params = mlp_params(jax.random.key(0), (3, 6, 3))
    with pytest.raises(ValueError, match=r"key must be a PRNG key .*got None"):
        amal_jax.init(config(), params, key=None)
    with pytest.raises(
        ValueError, match=r"a single PRNG key; got an array of keys of shape \(3,\)"
    ):
        amal_jax.init(config(), params, key=jax.random.split(jax.random.key(0), 3))
    cfg = config()
    _, train, valid = setup(cfg)
    for fn in (amal_jax.step, amal_jax.meta_update):
        with pytest.raises(ValueError, match=r"takes the AmalState from amal_jax\.init"):
            fn(cfg, train, valid)
    with pytest.raises(ValueError, match="train_update takes the AmalState"):
        amal_jax.train_update(cfg, train)
    with pytest.raises(ValueError, match=r"call the factory, e\.g\. optax\.adam"):
        config(optimizer=optax.adam)
    with pytest.raises(ValueError, match=r"MultiSteps .* hypergradient would be zero"):
        config(optimizer=optax.MultiSteps(optax.sgd(0.1), 4))
    with pytest.raises(ValueError, match="above the clamp's high 2"):
        amal_jax.table(N, 2, init=(5.0, 0.9))
    with pytest.raises(ValueError, match="global initial weights go up to 3"):
        amal_jax.global_weights(2, init=(3.0, 0.9), constraint="softplus")


def test_kd_loss_takes_a_traced_temperature():
    s, t = jnp.array([[1.0, 2.0, 0.5]]), jnp.array([[0.0, 1.0, 3.0]])
    traced = jax.jit(amal_jax.kd_loss)(s, t, 2.0)
    np.testing.assert_allclose(traced, amal_jax.kd_loss(s, t, 2.0), **F32)


def more_transformations():
    def custom_jvp_update(g, state, params=None):  # jax.nn functions carry custom JVP rules
        return jax.tree.map(lambda x: jax.nn.relu(x) + jax.nn.softplus(x), g), state

    return {
        "lamb": standard_promotion(optax.lamb(1e-2)),
        "adafactor": optax.adafactor(1e-2),
        "radam": standard_promotion(optax.radam(1e-2)),
        "nadam": standard_promotion(optax.nadam(1e-2)),
        "amsgrad": standard_promotion(optax.amsgrad(1e-2)),
        "adabelief": standard_promotion(optax.adabelief(1e-2)),
        "inject_hyperparams": standard_promotion(
            optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
        ),
        "apply_if_finite": optax.apply_if_finite(standard_promotion(optax.adam(1e-2)), 3),
        "masked": optax.masked(standard_promotion(optax.adam(1e-2)), {"a": True, "b": False}),
        "multi_transform": optax.multi_transform(
            {"x": standard_promotion(optax.adam(1e-2)), "y": optax.sgd(1e-2)}, {"a": "x", "b": "y"}
        ),
        "custom_jvp": optax.GradientTransformation(lambda p: optax.EmptyState(), custom_jvp_update),
    }


@pytest.mark.parametrize("name", list(more_transformations()))
def test_safe_derivatives_across_optax(name):
    """Same values; finite derivatives; equal to optax's own wherever those are finite."""
    optimizer = more_transformations()[name]
    params = {"a": jnp.array([[0.0, 1.0], [2.0, -1.0]]), "b": jnp.array([0.0, 3.0])}
    grads = {"a": jnp.array([[0.0, 0.5], [-1.0, 2.0]]), "b": jnp.array([0.0, 1.0])}
    state = optimizer.init(params)
    safe = amal_jax.safe_derivatives(optimizer)

    def weighted_update(opt, g):
        updates, _ = opt.update(g, state, params)
        return sum(jnp.sum(u * (i + 1.0)) for i, u in enumerate(jax.tree.leaves(updates)))

    assert_trees_close(
        jax.jit(lambda g: optimizer.update(g, state, params))(grads),
        jax.jit(lambda g: safe.update(g, state, params))(grads),
        {"rtol": 1e-6, "atol": 1e-7},
    )
    ours = jax.grad(weighted_update, argnums=1)(safe, grads)
    theirs = jax.grad(weighted_update, argnums=1)(optimizer, grads)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert np.all(np.isfinite(a))
        finite = np.isfinite(b)
        np.testing.assert_allclose(
            np.asarray(a)[finite], np.asarray(b)[finite], rtol=1e-5, atol=1e-7
        )


# -- from the code review ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mixer_fn",
    [amal_jax.table, lambda n, k, **kw: amal_jax.global_weights(k, **kw)],
    ids=["table", "global"],
)
def test_a_softplus_weight_on_its_bound_can_leave_it(mixer_fn):
    """The clip onto the bound is straight-through: a weight at the bound keeps a gradient."""
    mixer = mixer_fn(4, 2, constraint="softplus")
    params = mixer.project(mixer.init(jax.random.key(0)) + 1e3)  # every weight at the high bound
    batch = {"id": jnp.array([0, 1])}
    weights, vjp = jax.vjp(lambda p: mixer.apply(p, batch, jnp.zeros((2, 2))), params)
    np.testing.assert_allclose(weights, 2.0 - 1e-7, rtol=1e-6)
    (grads,) = vjp(jnp.ones_like(weights))
    assert float(jnp.abs(grads).max()) > 0.1
    lower = mixer.project(params - 0.5 * grads)
    assert float(mixer.apply(lower, batch, jnp.zeros((2, 2))).max()) < 1.9


def test_a_state_entry_that_starts_non_finite_does_not_block_training():
    """A 'best so far' that starts at inf is no reason to refuse every update."""

    def loss_fn(params, batch, model_state, key):
        del key
        best = jnp.minimum(model_state["best"], jnp.mean(kd_loss_fn(params, batch)))
        return kd_loss_fn(params, batch), {
            "best": jnp.where(model_state["seen"] > 0, best, jnp.inf),
            "seen": model_state["seen"] + 0.0,
        }

    cfg = config(loss_fn=loss_fn, val_loss_fn=lambda p, b, s: val_ce(p, b), stateful=True)
    kp, kb, kv = jax.random.split(jax.random.key(0), 3)
    state = amal_jax.init(
        cfg,
        mlp_params(kp, (3, 6, 3)),
        key=jax.random.key(1),
        model_state={"best": jnp.inf, "seen": jnp.zeros(())},
    )
    train, valid = make_batch(kb, 8, num_examples=N), make_batch(kv, 10, with_ids=False)
    new, metrics = jax.jit(amal_jax.step)(state, train, valid)
    assert not bool(metrics["train_update_skipped"])
    assert not np.allclose(new.params["head"]["w"], state.params["head"]["w"])


def test_a_model_state_of_another_mapping_type_is_accepted():
    """loss_fn returns a dict for a FrozenDict model state: same leaves, same state type."""
    from flax.core import FrozenDict

    def loss_fn(params, batch, model_state, key):
        del key
        return kd_loss_fn(params, batch), {"count": model_state["count"] + 1.0}

    cfg = config(loss_fn=loss_fn, val_loss_fn=lambda p, b, s: val_ce(p, b), stateful=True)
    state = amal_jax.init(
        cfg,
        mlp_params(jax.random.key(0), (3, 6, 3)),
        key=jax.random.key(1),
        model_state=FrozenDict({"count": jnp.zeros(())}),
    )
    _, train, valid = setup(config())
    new, _ = jax.jit(amal_jax.step)(state, train, valid)
    assert isinstance(new.model_state, FrozenDict) and float(new.model_state["count"]) == 1.0


def test_safe_derivatives_reach_into_checkpointed_updates():
    def update(g, state, params=None):
        return jax.checkpoint(lambda x: jnp.sqrt(x * x))(g) + g, state

    opt = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
    grad = jax.grad(lambda g: jnp.sum(amal_jax.safe_derivatives(opt).update(g, None)[0]))
    np.testing.assert_allclose(grad(jnp.array([0.0, 2.0])), [1.0, 2.0])
