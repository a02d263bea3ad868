"""Mixers: initial values, constraints, which params a batch can touch, and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import F32, standard_promotion

import amal_jax


def test_paper_init_weights():
    assert amal_jax.paper_init_weights(1) == (1.0,)
    np.testing.assert_allclose(amal_jax.paper_init_weights(3), (0.1, 0.9, 0.9))
    np.testing.assert_allclose(amal_jax.paper_init_weights(2, aux=0.7), (0.3, 0.7))


def test_table_reads_the_rows_of_the_batch_ids():
    init = np.arange(20, dtype=np.float32).reshape(10, 2) / 20
    mixer = amal_jax.table(10, 2, init=init)
    params = mixer.init(jax.random.key(0))
    weights = mixer.apply(params, {"id": jnp.array([7, 2, 7])}, jnp.zeros((3, 2)))
    np.testing.assert_allclose(weights, init[[7, 2, 7]], **F32)


def test_table_restrict_updates_zeroes_other_rows():
    mixer = amal_jax.table(6, 2)
    updates = jnp.ones((6, 2))
    restricted = mixer.restrict_updates(updates, {"id": jnp.array([1, 4])})
    expected = np.zeros((6, 2))
    expected[[1, 4]] = 1
    np.testing.assert_array_equal(restricted, expected)


def test_table_clamp_projection():
    mixer = amal_jax.table(3, 2, clamp=(0.05, 1.5))
    projected = mixer.project(jnp.array([[-1.0, 0.5], [3.0, 0.01], [1.0, 1.0]]))
    np.testing.assert_allclose(projected, [[0.05, 0.5], [1.5, 0.05], [1.0, 1.0]], **F32)


def test_table_softplus_reproduces_init_and_stays_positive():
    mixer = amal_jax.table(4, 2, constraint="softplus", init=(0.1, 0.9))
    params = mixer.init(jax.random.key(0))
    weights = mixer.apply(params, {"id": jnp.arange(4)}, jnp.zeros((4, 2)))
    np.testing.assert_allclose(weights, np.tile([0.1, 0.9], (4, 1)), rtol=1e-5)
    very_negative = mixer.apply(params - 50.0, {"id": jnp.arange(4)}, jnp.zeros((4, 2)))
    assert np.all(np.asarray(very_negative) > 0)
    np.testing.assert_array_equal(mixer.project(params), params)


def test_table_custom_ids_callable():
    mixer = amal_jax.table(5, 1, init=jnp.arange(5.0)[:, None] / 10, ids=lambda b: b[1])
    params = mixer.init(jax.random.key(0))
    weights = mixer.apply(params, (None, jnp.array([4, 0])), jnp.zeros((2, 1)))
    np.testing.assert_allclose(weights[:, 0], [0.4, 1e-7], rtol=1e-5)


def test_global_weights_broadcast_and_clamp():
    mixer = amal_jax.global_weights(2, init=(0.3, 0.6))
    params = mixer.init(jax.random.key(0))
    weights = mixer.apply(params, None, jnp.zeros((5, 2)))
    np.testing.assert_allclose(weights, np.tile([0.3, 0.6], (5, 1)), **F32)
    np.testing.assert_allclose(mixer.project(jnp.array([-1.0, 5.0])), [1e-7, 2 - 1e-7], **F32)


@pytest.mark.parametrize("activation", ["softplus", "sigmoid"])
def test_network_starts_at_init_weights(activation):
    mixer = amal_jax.network(2, hidden=(8, 8), init=(0.2, 0.8), activation=activation)
    params = mixer.init(jax.random.key(0))
    losses = jax.random.uniform(jax.random.key(1), (6, 2), maxval=3.0)
    weights = mixer.apply(params, None, losses)
    assert weights.shape == (6, 2)
    # Small last-layer weights: every example starts close to the requested mix.
    np.testing.assert_allclose(weights, np.tile([0.2, 0.8], (6, 1)), atol=0.05)
    assert np.all(np.asarray(weights) > 0)


def test_network_depends_on_features_and_is_differentiable():
    mixer = amal_jax.network(
        2, hidden=(4,), features=lambda batch, losses: batch["f"], num_features=3
    )
    params = mixer.init(jax.random.key(0))
    batch = {"f": jax.random.normal(jax.random.key(1), (5, 3))}
    grads = jax.grad(lambda p: jnp.sum(mixer.apply(p, batch, jnp.zeros((5, 2))) ** 2))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    w1 = mixer.apply(params, batch, jnp.zeros((5, 2)))
    w2 = mixer.apply(params, {"f": batch["f"] * 100.0}, jnp.zeros((5, 2)))
    assert not np.allclose(w1, w2)


class TestErrors:
    def test_table_bad_sizes(self):
        with pytest.raises(ValueError, match="num_examples must be a positive integer"):
            amal_jax.table(0, 2)
        with pytest.raises(ValueError, match="num_losses must be a positive integer"):
            amal_jax.table(5, 2.0)

    def test_table_bad_constraint(self):
        with pytest.raises(ValueError, match="constraint must be one of"):
            amal_jax.table(5, 2, constraint="relu")

    def test_table_bad_clamp(self):
        with pytest.raises(ValueError, match="clamp must be"):
            amal_jax.table(5, 2, clamp=(1.0, 0.5))

    def test_table_bad_init(self):
        with pytest.raises(ValueError, match="do not fit"):
            amal_jax.table(5, 2, init=(0.1, 0.2, 0.3))
        with pytest.raises(ValueError, match="finite and non-negative"):
            amal_jax.table(5, 2, init=(-0.1, 0.2))

    def test_table_missing_ids(self):
        mixer = amal_jax.table(5, 2)
        with pytest.raises(ValueError, match=r"batch\['id'\]"):
            mixer.apply(mixer.init(jax.random.key(0)), {"x": jnp.ones(2)}, jnp.zeros((2, 2)))

    def test_table_float_ids(self):
        mixer = amal_jax.table(5, 2)
        with pytest.raises(ValueError, match="integer array"):
            mixer.apply(mixer.init(jax.random.key(0)), {"id": jnp.ones(2)}, jnp.zeros((2, 2)))

    def test_table_wrong_number_of_columns(self):
        mixer = amal_jax.table(5, 2)
        with pytest.raises(ValueError, match="loss columns"):
            mixer.apply(mixer.init(jax.random.key(0)), {"id": jnp.arange(2)}, jnp.zeros((2, 3)))

    def test_network_features_need_num_features(self):
        with pytest.raises(ValueError, match="needs num_features"):
            amal_jax.network(2, features=lambda b, losses: losses)

    def test_network_wrong_feature_width(self):
        mixer = amal_jax.network(2, features=lambda b, losses: jnp.ones((3, 5)), num_features=4)
        with pytest.raises(ValueError, match=r"features must be \[B, 4\]"):
            mixer.init(jax.random.key(0))
            mixer.apply(mixer.init(jax.random.key(0)), None, jnp.zeros((3, 2)))

    def test_network_bad_activation(self):
        with pytest.raises(ValueError, match="activation"):
            amal_jax.network(2, activation="tanh")

    def test_sigmoid_init_above_max(self):
        with pytest.raises(ValueError, match="below max_weight"):
            amal_jax.network(2, activation="sigmoid", init=(0.5, 2.5), max_weight=2.0)


def test_meta_optimizer_state_shapes_fit_every_mixer():
    opt = standard_promotion(optax.adam(1e-2))
    for mixer in (amal_jax.table(7, 3), amal_jax.global_weights(3), amal_jax.network(3)):
        params = mixer.init(jax.random.key(0))
        state = opt.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        updates, _ = opt.update(grads, state, params)
        restricted = mixer.restrict_updates(updates, {"id": jnp.array([0, 1])})
        assert jax.tree.structure(restricted) == jax.tree.structure(params)


def test_table_ids_out_of_range_get_weight_zero_not_a_neighbour():
    mixer = amal_jax.table(4, 2, init=np.arange(1.0, 9.0).reshape(4, 2) / 8)
    params = mixer.init(jax.random.key(0))
    batch = {"id": jnp.array([1, 4, -1, 3])}
    weights = mixer.apply(params, batch, jnp.zeros((4, 2)))
    np.testing.assert_array_equal(weights, [[3 / 8, 4 / 8], [0, 0], [0, 0], [7 / 8, 1.0]])
    counts = mixer.batch_metrics({"id": jnp.array([1, 4, -1, 3, 1, 1, -1])})
    assert {k: int(v) for k, v in counts.items()} == {"invalid_ids": 3, "duplicate_ids": 2}
    with pytest.raises(ValueError, match=r"2 example ids are outside \[0, 4\): 4 \(position 1\)"):
        mixer.check_batch(batch)


def test_table_restrict_updates_ignores_out_of_range_ids():
    mixer = amal_jax.table(3, 1)
    restricted = mixer.restrict_updates(jnp.ones((3, 1)), {"id": jnp.array([-1, 3, 0])})
    np.testing.assert_array_equal(restricted[:, 0], [1.0, 0.0, 0.0])
