"""Clean rows used both ways (amal_jax.clean) and the per-column trust mixer (trust_table)."""

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
    amal_config,
    finite_differences,
    kd_loss_fn,
    rel_err,
    setup_state,
    standard_promotion,
    val_ce,
    x64,
)

import amal_jax
from amal_jax import clean

# ---------------------------------------------------------------- cross_fit


@pytest.mark.parametrize("n,folds", [(9, 3), (10, 3), (31, 4), (5, 5)])
def test_rotate_roles_are_disjoint_and_every_row_selects_once(n, folds):
    roles = clean.cross_fit(n, folds, scheme="rotate", seed=3)
    assert len(roles) == folds
    selected = np.concatenate([r.select for r in roles])
    np.testing.assert_array_equal(np.sort(selected), np.arange(n))
    for r in roles:
        parts = [set(r.train.tolist()), set(r.meta.tolist()), set(r.select.tolist())]
        assert sum(len(p) for p in parts) == n
        assert set.union(*parts) == set(range(n))
        assert all(len(p) > 0 for p in parts)
        assert all(np.all(np.diff(a) > 0) for a in r)  # sorted, no repeats


def test_shared_roles_train_on_the_hypergradient_rows():
    roles = clean.cross_fit(20, 3, scheme="shared")
    for r in roles:
        np.testing.assert_array_equal(r.train, r.meta)
        assert not set(r.train.tolist()) & set(r.select.tolist())
        assert len(r.train) + len(r.select) == 20
    a, b = clean.cross_fit(20, 3, seed=1), clean.cross_fit(20, 3, seed=2)
    assert not np.array_equal(a[0].select, b[0].select)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_clean=2, num_folds=3), "num_clean"),
        (dict(num_clean=10, num_folds=1), "num_folds"),
        (dict(num_clean=10, num_folds=2, scheme="rotate"), "num_folds"),
        (dict(num_clean=10, scheme="kfold"), "scheme"),
        (dict(num_clean=10.0), "num_clean"),
        (dict(num_clean=10, seed=-1), "seed"),
    ],
)
def test_cross_fit_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        clean.cross_fit(**kwargs)


# ---------------------------------------------------------------- batches


def test_clean_rows_per_batch_never_rounds_a_kind_away():
    assert clean.clean_rows_per_batch(64, 0.5) == 32
    assert clean.clean_rows_per_batch(64, 0.0) == 0
    assert clean.clean_rows_per_batch(64, 1e-4) == 1
    assert clean.clean_rows_per_batch(64, 0.9999) == 63
    assert clean.clean_rows_per_batch(64, 1.0) == 64
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="clean_share"):
            clean.clean_rows_per_batch(64, bad)


def test_mixed_batches_have_the_share_and_visit_rows_evenly():
    rng = np.random.default_rng(0)
    weak, cl = clean.mixed_batch_indices(rng, 90, 7, batch_size=16, clean_share=0.25, steps=30)
    assert weak.shape == (30, 12) and cl.shape == (30, 4)
    # 360 weak draws are 4 full passes over 90 rows; 120 clean draws cover 7 rows evenly.
    np.testing.assert_array_equal(np.bincount(weak.ravel(), minlength=90), np.full(90, 4))
    counts = np.bincount(cl.ravel(), minlength=7)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 120
    # The default is one pass over the weak rows.
    weak, cl = clean.mixed_batch_indices(rng, 90, 7, batch_size=16, clean_share=0.25)
    assert weak.shape == (8, 12) and cl.shape == (8, 4)
    assert set(weak.ravel().tolist()) == set(range(90))


def test_mixed_batches_without_clean_rows_and_bad_arguments():
    weak, cl = clean.mixed_batch_indices(
        np.random.default_rng(0), 10, 0, batch_size=4, clean_share=0.0
    )
    assert weak.shape == (3, 4) and cl.shape == (3, 0)
    with pytest.raises(ValueError, match="num_clean"):
        clean.mixed_batch_indices(np.random.default_rng(0), 10, 0, batch_size=4)
    with pytest.raises(ValueError, match="Generator"):
        clean.mixed_batch_indices(0, 10, 3, batch_size=4)
    with pytest.raises(ValueError, match="steps"):
        clean.mixed_batch_indices(np.random.default_rng(0), 10, 3, batch_size=4, steps=0)


# ---------------------------------------------------------------- trust_table


def _hyper(b, k, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, k))


def test_trust_table_weights_are_trust_times_table_and_fixed_columns_stay():
    mixer = amal_jax.trust_table(6, 3, trust_init=(1.0, 0.5, 0.2), table_init=1.0, fixed=(0,))
    params = mixer.init(jax.random.key(0))
    params = {"trust": params["trust"], "table": params["table"].at[2].set(jnp.array([2, 2, 0.5]))}
    w = mixer.apply(params, {"id": jnp.array([2, 4, 9])}, jnp.ones((3, 3)))
    np.testing.assert_allclose(
        np.asarray(w), [[1.0, 1.0, 0.1], [1.0, 0.5, 0.2], [0.0, 0.0, 0.0]], **F32
    )


def test_trust_gradient_is_the_mean_over_active_rows():
    mixer = amal_jax.trust_table(10, 3, trust_init=(0.3, 0.7, 1.1), table_init=0.5)
    params = mixer.init(jax.random.key(0))
    table = np.asarray(jax.random.uniform(jax.random.key(1), (10, 3), minval=0.2, maxval=1.8))
    params = {"trust": params["trust"], "table": jnp.asarray(table)}
    ids = jnp.array([0, 3, 5, 7])
    losses = jnp.array([[1.0, 0.0, 2.0], [0.5, 0.0, 0.0], [0.2, 3.0, 0.0], [1.0, 0.0, 0.0]])
    g = _hyper(4, 3)
    _, vjp = jax.vjp(lambda p: mixer.apply(p, {"id": ids}, losses), params)
    (grads,) = vjp(g)
    active = np.asarray(losses) != 0
    rows = table[np.asarray(ids)]
    expected_trust = (np.asarray(g) * rows * active).sum(0) / np.maximum(active.sum(0), 1)
    expected_table = np.zeros((10, 3))
    expected_table[np.asarray(ids)] = np.asarray(g) * np.asarray(params["trust"])[None]
    np.testing.assert_allclose(np.asarray(grads["trust"]), expected_trust, **F32)
    np.testing.assert_allclose(np.asarray(grads["table"]), expected_table, **F32)


def test_trust_table_active_callable_and_its_shape_check():
    mixer = amal_jax.trust_table(
        4, 2, trust_init=1.0, active=lambda batch, losses: batch["mask"] > 0
    )
    params = mixer.init(jax.random.key(0))
    batch = {"id": jnp.array([0, 1]), "mask": jnp.array([[1.0, 1.0], [1.0, 0.0]])}
    _, vjp = jax.vjp(lambda p: mixer.apply(p, batch, jnp.ones((2, 2))), params)
    (grads,) = vjp(jnp.ones((2, 2)))
    np.testing.assert_allclose(np.asarray(grads["trust"]), [1.0, 1.0], **F32)
    bad = amal_jax.trust_table(4, 2, active=lambda batch, losses: jnp.ones((2,), bool))
    with pytest.raises(ValueError, match="active"):
        bad.apply(bad.init(jax.random.key(0)), {"id": jnp.array([0, 1])}, jnp.ones((2, 2)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fixed=(3,)), "fixed"),
        (dict(fixed=(0, 0)), "fixed"),
        (dict(trust_init=(3.0, 1.0)), "above the clamp"),
        (dict(table_init=-1.0), "non-negative"),
        (dict(trust_clamp=(1.0, 0.5)), "clamp"),
        (dict(active=3), "active"),
        (dict(trust_init=(1.0, 1.0, 1.0)), "shape"),
    ],
)
def test_trust_table_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        amal_jax.trust_table(5, 2, **kwargs)


def test_trust_table_step_moves_only_used_rows_and_learned_columns():
    mixer = amal_jax.trust_table(TABLE_ROWS, 2, trust_init=(1.0, 0.5), fixed=(0,))
    cfg = amal_config(mixer=mixer, meta_optimizer=optax.sgd(0.5), normalize_hypergradient=True)
    state, train, valid = setup_state(cfg)
    new, metrics = jax.jit(amal_jax.step)(state, train, valid)
    before, after = state.mix_params, new.mix_params
    assert float(after["trust"][0]) == 1.0  # fixed
    assert float(after["trust"][1]) != 0.5
    changed = np.flatnonzero(np.any(np.asarray(after["table"] != before["table"]), axis=1))
    assert set(changed.tolist()) <= set(np.asarray(train["id"]).tolist()) and changed.size
    np.testing.assert_array_equal(np.asarray(after["table"][:, 0]), 1.0)
    assert not bool(metrics["meta_update_skipped"])


def test_trust_meta_gradient_matches_float64_finite_differences():
    """One meta step moves trust_k by -lr / n_k * dL_V(theta'(t)) / dt_k (raw hypergradient)."""
    with x64():
        mixer = amal_jax.trust_table(
            TABLE_ROWS, 2, trust_init=(0.6, 0.4), table_init=0.8, dtype=jnp.float64
        )
        lr = 1e-3
        cfg = amal_config(mixer=mixer, meta_optimizer=optax.sgd(lr))
        state, train, valid = setup_state(cfg)
        state = state._replace(params=jax.tree.map(lambda p: p.astype(jnp.float64), state.params))
        state = amal_jax.init(cfg, state.params, key=jax.random.key(0))
        f64 = {k: train[k].astype(jnp.float64) for k in ("x", "teacher")}  # student and teacher
        train = {**train, **f64}
        valid = {**valid, "x": valid["x"].astype(jnp.float64)}
        new, _ = amal_jax.meta_update(state, train, valid)
        moved = (np.asarray(state.mix_params["trust"]) - np.asarray(new.mix_params["trust"])) / lr

        losses = kd_loss_fn(state.params, train)
        counts = np.asarray(jnp.sum(losses != 0, axis=0))

        @jax.jit
        def val_after_jit(trust):
            params = {"trust": trust, "table": state.mix_params["table"]}
            weights = mixer.apply(params, train, jax.lax.stop_gradient(losses))
            b = weights.shape[0]
            grads = jax.grad(lambda p: jnp.sum(weights * kd_loss_fn(p, train)) / b)(state.params)
            theta, _ = amal_jax.lookahead(state.params, grads, cfg.optimizer, state.opt_state)
            return val_ce(theta, valid)

        def val_after(trust):
            return float(val_after_jit(jnp.asarray(trust)))

        fd = finite_differences(val_after, np.asarray(state.mix_params["trust"]))
        assert rel_err(moved, fd / counts) < FD_RTOL * 100


STEPS = 1000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_weak_labels_reduce_to_training_on_the_clean_rows(seed):
    """Worst case: the weak labels are all wrong; their trust falls, accuracy ~ clean-only."""
    rng = np.random.default_rng(seed)
    d, c, n_weak, n_clean, n_val, n_test = 8, 3, 600, 60, 200, 600
    centers = rng.normal(size=(c, d)) * 1.5

    def sample(n):
        y = rng.integers(0, c, n)
        return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y

    x_weak, y_true = sample(n_weak)
    # Noise: a label drawn at random among the wrong classes, so it never carries the truth
    # (uniformly random labels would be harmless to a linear model: no trust to lose).
    y_weak = (y_true + rng.integers(1, c, n_weak)) % c
    x_clean, y_clean = sample(n_clean)
    x_val, y_val = sample(n_val)
    x_test, y_test = sample(n_test)
    x_all = jnp.asarray(np.concatenate([x_weak, x_clean]))
    y_all = jnp.asarray(np.concatenate([y_weak, y_clean]))
    is_clean = jnp.asarray(np.arange(n_weak + n_clean) >= n_weak)

    def logits(params, x):
        return x @ params["w"] + params["b"]

    def loss_fn(params, batch):
        ce = amal_jax.cross_entropy(logits(params, batch["x"]), batch["y"])
        on = batch["clean"].astype(ce.dtype)
        return amal_jax.stack_losses(ce * (1 - on), ce * on)  # [B, 2]: weak, clean

    def val_loss(params, batch):
        return jnp.mean(amal_jax.cross_entropy(logits(params, batch["x"]), batch["y"]))

    r = np.random.default_rng(1)
    weak, cl = clean.mixed_batch_indices(
        r, n_weak, n_clean, batch_size=32, clean_share=0.5, steps=STEPS
    )
    ids = jnp.asarray(np.concatenate([weak, n_weak + cl], axis=1))  # [steps, 32]
    vids = jnp.asarray(np.stack([r.choice(n_val, 32, replace=False) for _ in range(STEPS)]))
    x_val_j, y_val_j = jnp.asarray(x_val), jnp.asarray(y_val)

    def run(mixer, meta_lr):
        cfg = amal_jax.AmalConfig(
            loss_fn=loss_fn,
            val_loss_fn=val_loss,
            optimizer=standard_promotion(optax.adam(0.05)),
            mixer=mixer,
            meta_optimizer=optax.sgd(meta_lr),
            normalize_hypergradient=True,
        )
        params = {"w": jnp.zeros((d, c)), "b": jnp.zeros(c)}
        state = amal_jax.init(cfg, params, key=jax.random.key(0))

        def body(state, idx):
            i, v = idx
            batch = {"x": x_all[i], "y": y_all[i], "clean": is_clean[i], "id": i}
            return amal_jax.step(state, batch, {"x": x_val_j[v], "y": y_val_j[v]})[0], None

        state, _ = jax.jit(lambda s: jax.lax.scan(body, s, (ids, vids)))(state)
        acc = float(np.mean(np.argmax(logits(state.params, x_test), 1) == y_test))
        return acc, state.mix_params

    n = n_weak + n_clean
    clean_only, _ = run(amal_jax.global_weights(2, init=(0.0, 1.0)), 0.0)
    weak_fixed, _ = run(amal_jax.global_weights(2, init=(1.0, 1.0)), 0.0)
    amal, mix = run(amal_jax.trust_table(n, 2, trust_init=(1.0, 1.0), fixed=(1,)), 0.05)
    # The weak rows' weights (trust x per-row correction) fell from 1 to about 0.
    weak_weights = float(mix["trust"][0]) * np.asarray(mix["table"][:n_weak, 0])
    assert np.mean(weak_weights) < 0.2
    assert float(mix["trust"][1]) == 1.0
    assert weak_fixed < clean_only - 0.05  # the noise does hurt at a fixed weight ...
    assert amal > clean_only - 0.015  # ... and AMAL recovers training on the clean rows
