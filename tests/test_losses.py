"""Per-example loss helpers against hand-computed values."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import F32

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


# --------------------------------------------------------------------------------------------
# Out-of-range labels and malformed targets (issue 8: nothing goes silently wrong)


def np_cross_entropy(logits, labels):
    """Reference: -log softmax(logits)[label] for labels in [0, C), 0 for any other label."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    c = logits.shape[1]
    return np.array([-log_p[i, y] if 0 <= y < c else 0.0 for i, y in enumerate(np.asarray(labels))])


def ce_sum(logits, labels):
    return jnp.sum(amal_jax.cross_entropy(logits, labels))


@pytest.mark.parametrize("jit", [False, True])
def test_abstain_label_gives_zero_loss_and_zero_gradient(jit):
    logits = jnp.array([[2.0, -1.0, 0.5], [0.3, 0.1, -0.2]])
    labels = jnp.array([-1, 1])
    loss_fn = jax.jit(amal_jax.cross_entropy) if jit else amal_jax.cross_entropy
    grad_fn = jax.jit(jax.grad(ce_sum)) if jit else jax.grad(ce_sum)
    loss = loss_fn(logits, labels)
    assert float(loss[0]) == 0.0
    np.testing.assert_allclose(loss, np_cross_entropy(logits, labels), **F32)
    grad = grad_fn(logits, labels)
    np.testing.assert_array_equal(grad[0], np.zeros(3))
    # The labelled row keeps the closed-form gradient softmax - one_hot.
    np.testing.assert_allclose(grad[1], jax.nn.softmax(logits[1]) - np.eye(3)[1], **F32)


def test_label_equal_to_num_classes_raises_eagerly():
    logits = jnp.zeros((4, 3))
    with pytest.raises(
        ValueError,
        match=r"labels\[2\] = 3 is not a class: logits have C = 3 classes, so labels must lie "
        r"in \[0, 3\)",
    ):
        amal_jax.cross_entropy(logits, jnp.array([0, -1, 3, 7]))
    # Labels closed over (concrete) are checked even inside grad and jit.
    with pytest.raises(ValueError, match=r"labels\[0\] = 5"):
        jax.grad(lambda lg: ce_sum(lg, np.array([5, 0, 0, 0])))(logits)
    closed_over = jnp.array([0, 3, 0, 0])
    with pytest.raises(ValueError, match=r"labels\[1\] = 3"):
        jax.jit(lambda lg: ce_sum(lg, closed_over))(logits)


def test_label_equal_to_num_classes_is_ignored_when_traced():
    logits = jax.random.normal(jax.random.key(1), (3, 3))
    labels = jnp.array([3, 0, 100])
    loss = jax.jit(amal_jax.cross_entropy)(logits, labels)
    np.testing.assert_array_equal(np.asarray(loss)[[0, 2]], [0.0, 0.0])
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, np_cross_entropy(logits, labels), **F32)
    grad = jax.jit(jax.grad(ce_sum))(logits, labels)
    np.testing.assert_array_equal(np.asarray(grad)[[0, 2]], np.zeros((2, 3)))
    np.testing.assert_allclose(grad[1], jax.nn.softmax(logits[1]) - np.eye(3)[0], **F32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_batch_matches_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(12, 5)).astype(np.float32) * 3
    labels = rng.integers(-3, 5, size=12)
    labels[:2] = [-1, 4]  # at least one abstain and one valid
    expected = np_cross_entropy(logits, labels)
    np.testing.assert_allclose(amal_jax.cross_entropy(logits, labels), expected, **F32)
    np.testing.assert_allclose(jax.jit(amal_jax.cross_entropy)(logits, labels), expected, **F32)
    # The documented mean over the labelled rows only.
    valid = (labels >= 0) & (labels < 5)
    loss = amal_jax.cross_entropy(logits, labels)
    np.testing.assert_allclose(loss.sum() / int(valid.sum()), expected[valid].mean(), **F32)
    # Gradient: softmax - one_hot on valid rows, exactly 0 elsewhere.
    grad = np.asarray(jax.grad(ce_sum)(jnp.asarray(logits), labels))
    np.testing.assert_array_equal(grad[~valid], 0.0)
    p = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(
        grad[valid], p[valid] - np.eye(5)[labels[valid]], rtol=1e-5, atol=1e-6
    )


def test_cross_entropy_gradient_matches_finite_differences(float64):
    logits = jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)
    labels = jnp.array([2, -1, 0, 1])
    grad = np.asarray(jax.grad(ce_sum)(logits, labels))
    h = 1e-6
    fd = np.zeros((4, 3))
    for i in range(4):
        for c in range(3):
            e = jnp.zeros((4, 3), jnp.float64).at[i, c].set(h)
            fd[i, c] = (ce_sum(logits + e, labels) - ce_sum(logits - e, labels)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_losses_under_vmap_match_a_loop():
    k = jax.random.split(jax.random.key(4), 3)
    logits = jax.random.normal(k[0], (3, 4, 5))
    teacher = jax.random.normal(k[1], (3, 4, 5))
    probs = jax.nn.softmax(jax.random.normal(k[2], (3, 4, 5)))
    labels = jnp.array([[0, -1, 4, 5], [1, 1, -2, 0], [9, 3, 2, 1]])  # traced: 5 and 9 ignored
    ce = jax.vmap(amal_jax.cross_entropy)(logits, labels)
    for g in range(3):
        np.testing.assert_allclose(ce[g], np_cross_entropy(logits[g], labels[g]), **F32)
    soft = jax.vmap(amal_jax.soft_cross_entropy)(logits, probs)
    kd = jax.vmap(amal_jax.kd_loss)(logits, teacher)
    for g in range(3):
        np.testing.assert_allclose(soft[g], amal_jax.soft_cross_entropy(logits[g], probs[g]), **F32)
        np.testing.assert_allclose(kd[g], amal_jax.kd_loss(logits[g], teacher[g]), **F32)


def test_jitted_losses_do_not_retrace_on_new_data():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def total(logits, labels, probs, teacher):
        return (
            ce_sum(logits, labels)
            + jnp.sum(amal_jax.soft_cross_entropy(logits, probs))
            + jnp.sum(amal_jax.kd_loss(logits, teacher))
        )

    for seed in range(3):
        k = jax.random.split(jax.random.key(seed), 3)
        logits = jax.random.normal(k[0], (4, 3))
        labels = jnp.array([seed, -1, 3, 0])
        probs = jax.nn.softmax(jax.random.normal(k[1], (4, 3)))
        assert np.isfinite(float(total(logits, labels, probs, jax.random.normal(k[2], (4, 3)))))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([0.5, -0.1, 0.6], r"probs row 1 has a negative entry"),
        ([np.nan, 0.5, 0.5], r"probs row 1 is not finite"),
        ([np.inf, 0.0, 0.0], r"probs row 1 is not finite"),
        ([0.25, 0.25, 0.0], r"probs row 1 sums to 0.5; each row must sum to 1 \(within 1e-03\)"),
        ([0.5, 0.5, 0.5], r"probs row 1 sums to 1.5"),
    ],
)
def test_soft_cross_entropy_rejects_bad_target_rows(row, message):
    probs = np.array([[1.0, 0.0, 0.0], row, [0.0, 0.0, 1.0]], np.float32)
    with pytest.raises(ValueError, match=message):
        amal_jax.soft_cross_entropy(jnp.zeros((3, 3)), probs)


def test_soft_cross_entropy_zero_rows_and_tolerance():
    logits = jax.random.normal(jax.random.key(5), (3, 4))
    probs = jnp.array([[0.1, 0.2, 0.3, 0.4], [0.0] * 4, [0.0, 0.0, 0.0, 1.0]])
    loss = amal_jax.soft_cross_entropy(logits, probs)
    assert float(loss[1]) == 0.0
    log_p = np.asarray(jax.nn.log_softmax(logits), np.float64)
    np.testing.assert_allclose(loss, -(np.asarray(probs) * log_p).sum(axis=1), **F32)
    grad = jax.grad(lambda lg: jnp.sum(amal_jax.soft_cross_entropy(lg, probs)))(logits)
    np.testing.assert_array_equal(grad[1], np.zeros(4))
    # Softmax outputs pass, in float32 over many classes and in bfloat16.
    wide = jax.nn.softmax(jax.random.normal(jax.random.key(6), (8, 1000)) * 5)
    assert amal_jax.soft_cross_entropy(jnp.zeros((8, 1000)), wide).shape == (8,)
    half = jax.nn.softmax(jax.random.normal(jax.random.key(7), (8, 10))).astype(jnp.bfloat16)
    assert amal_jax.soft_cross_entropy(jnp.zeros((8, 10)), half).shape == (8,)


def test_soft_cross_entropy_bad_targets_under_jit_are_defined():
    probs = jnp.array([[0.5, 0.5], [jnp.nan, 0.5]])
    loss = jax.jit(amal_jax.soft_cross_entropy)(jnp.zeros((2, 2)), probs)
    np.testing.assert_allclose(loss[0], np.log(2.0), **F32)
    assert np.isnan(loss[1])


def test_kd_loss_rejects_non_finite_teacher_logits_eagerly():
    s = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match=r"kd_loss: teacher_logits row 2 is not finite"):
        amal_jax.kd_loss(s, jnp.array([[0.0, 1.0], [2.0, 3.0], [jnp.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"teacher_logits row 0 is not finite"):
        amal_jax.kd_loss(s, np.array([[np.inf, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    # Closed over inside grad, the teacher is concrete and still checked.
    bad = jnp.array([[0.0, 1.0], [jnp.inf, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"teacher_logits row 1"):
        jax.grad(lambda s: jnp.sum(amal_jax.kd_loss(s, bad)))(s)
    with pytest.raises(ValueError, match=r"row 0 is not finite.*at least one finite entry"):
        amal_jax.kd_loss(s, jnp.array([[-jnp.inf, -jnp.inf], [0.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="finite positive"):
        amal_jax.kd_loss(s, jnp.zeros((3, 2)), float("inf"))
    with pytest.raises(ValueError, match="finite positive"):
        amal_jax.kd_loss(s, jnp.zeros((3, 2)), float("nan"))


def test_kd_loss_non_finite_teacher_under_jit_is_non_finite_for_that_row_only():
    s = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    t = jnp.array([[jnp.nan, 0.0], [0.5, 0.0]])
    loss = jax.jit(amal_jax.kd_loss)(s, t)
    assert np.isnan(loss[0])
    np.testing.assert_allclose(loss[1], amal_jax.kd_loss(s[1:], t[1:])[0], **F32)


def test_kd_loss_a_teacher_logit_of_minus_inf_rules_a_class_out():
    """-inf = probability 0: the KL term of that class is 0, eagerly and under jit."""
    s = jnp.array([[0.3, 1.0, -0.5], [1.0, 0.0, 2.0]])
    t = jnp.array([[-jnp.inf, 2.0, 0.0], [0.5, -jnp.inf, -jnp.inf]])
    for fn in (amal_jax.kd_loss, jax.jit(amal_jax.kd_loss)):
        loss = fn(s, t)
        p_t = np.exp(np.asarray(jax.nn.log_softmax(t / 4.0)))
        log_p_s = np.asarray(jax.nn.log_softmax(s / 4.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p_t > 0, p_t * (np.log(p_t) - log_p_s), 0.0)
        np.testing.assert_allclose(loss, 16.0 * terms.sum(axis=1), **F32)
        grad = jax.grad(lambda x, fn=fn: jnp.sum(fn(x, t)))(s)
        assert np.all(np.isfinite(np.asarray(grad)))
