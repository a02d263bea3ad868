"""Per-example loss helpers against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import F32

import amal_jax


def test_cross_entropy_by_hand():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    expected = [
        -np.log(np.exp(2.0) / (np.exp(2.0) + 1 + np.exp(-1.0))),
        np.log(3.0),
    ]
    np.testing.assert_allclose(amal_jax.cross_entropy(logits, jnp.array([0, 2])), expected, **F32)


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets():
    logits = jax.random.normal(jax.random.key(0), (5, 4))
    labels = jnp.array([0, 3, 1, 1, 2])
    np.testing.assert_allclose(
        amal_jax.soft_cross_entropy(logits, jax.nn.one_hot(labels, 4)),
        amal_jax.cross_entropy(logits, labels),
        **F32,
    )


def test_kd_loss_by_hand():
    """T^2 KL(softmax(t/T) || softmax(s/T)) for T = 2 on one example, computed in numpy."""
    s, t, temp = np.array([1.0, 0.0, -1.0]), np.array([0.5, 1.5, 0.0]), 2.0
    p_t = np.exp(t / temp) / np.exp(t / temp).sum()
    p_s = np.exp(s / temp) / np.exp(s / temp).sum()
    expected = temp**2 * np.sum(p_t * np.log(p_t / p_s))
    got = amal_jax.kd_loss(jnp.asarray(s)[None], jnp.asarray(t)[None], temp)
    np.testing.assert_allclose(got, [expected], **F32)
    assert float(expected) > 0


def test_kd_loss_gives_no_gradient_to_the_teacher():
    s, t = jnp.ones((2, 3)), jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    grad_t = jax.grad(lambda t: jnp.sum(amal_jax.kd_loss(s, t)))(t)
    np.testing.assert_array_equal(grad_t, np.zeros((2, 3)))
    grad_s = jax.grad(lambda s: jnp.sum(amal_jax.kd_loss(s, t)))(s)
    assert float(jnp.abs(grad_s).sum()) > 0


def test_stack_losses_and_errors():
    assert amal_jax.stack_losses(jnp.zeros(3), jnp.ones(3)).shape == (3, 2)
    with pytest.raises(ValueError, match="one B"):
        amal_jax.stack_losses(jnp.zeros(3), jnp.ones(4))
    with pytest.raises(ValueError, match="at least one"):
        amal_jax.stack_losses()
    with pytest.raises(ValueError, match="integers"):
        amal_jax.cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"logits \[B, C\]"):
        amal_jax.cross_entropy(jnp.zeros(3), jnp.zeros(3, int))
    with pytest.raises(ValueError, match="temperature"):
        amal_jax.kd_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), 0.0)
    with pytest.raises(ValueError, match="one \\[B, C\\] shape"):
        amal_jax.soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
