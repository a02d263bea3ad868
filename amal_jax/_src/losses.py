"""Per-example loss helpers. Each returns ``[B]`` values; stack them into the ``[B, K]`` matrix.

Weighting and reduction are explicit and belong to the caller (the step mixes columns with
the learned weights and averages over the batch).

Targets are checked where they can be. Called eagerly (labels, target probabilities or
teacher logits are concrete arrays, not JAX tracers), a malformed target raises a
``ValueError`` naming the first bad position. Inside ``jax.jit`` / ``jax.grad`` / ``jax.vmap``
nothing can raise, so the behaviour there is defined instead: out-of-range integer labels
give loss 0 and gradient 0, and non-finite soft targets or teacher logits give non-finite
losses, which the training step :func:`amal_jax.step` detects and skips.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from amal_jax._src.numerics import promote

__all__ = ["cross_entropy", "kd_loss", "soft_cross_entropy", "stack_losses"]


def _is_concrete(x: jax.Array) -> bool:
    # Outside jit / grad / vmap the values are known and can be checked; a tracer's cannot.
    return not isinstance(x, jax.core.Tracer)


def _first_bad_row(bad_rows: np.ndarray) -> int:
    return int(np.flatnonzero(bad_rows)[0])


def _row_text(row: np.ndarray, limit: int = 8) -> str:
    # Six significant digits: float32 0.1 reads 0.1, not 0.10000000149011612.
    values = ", ".join(f"{float(v):.6g}" for v in row[:limit])
    return f"[{values}{', ...' if row.shape[0] > limit else ''}]"


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Per-example cross-entropy to integer labels; labels outside ``[0, C)`` are ignored.

    ``loss_i = -log softmax(logits_i)[labels_i]`` where ``0 <= labels_i < C``, and exactly 0,
    with zero gradient, for any other label (an "ignore index"). Negative labels are the
    weak-supervision convention for "abstain" / "no label" (``-1`` is what the project's
    ``data.majority_vote`` returns when it abstains) and are always allowed.

    A label ``>= C`` is never a legitimate abstain, so when ``labels`` is concrete (called
    outside ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` tracing) it raises a ``ValueError``.
    Inside a trace nothing can raise; such a label is ignored like a negative one.

    Since ignored rows contribute zeros, ``jnp.mean(cross_entropy(...))`` averages over
    **all** ``B`` rows. For the mean over the labelled rows only, divide the sum by the
    number of valid labels instead, e.g.
    ``loss.sum() / jnp.maximum(((labels >= 0) & (labels < C)).sum(), 1)``.

    Args:
        logits: ``[B, C]``.
        labels: ``[B]`` integers; ``[0, C)`` are classes, negative values are ignored.

    Returns:
        ``[B]``: ``-log softmax(logits)[label]``, 0 where the label is ignored.

    Raises:
        ValueError: if the shapes are not ``[B, C]`` / ``[B]``, the labels are not integers,
            or (concrete labels only) a label is ``>= C``.

    Example:
        >>> import jax.numpy as jnp
        >>> loss = cross_entropy(jnp.zeros((2, 4)), jnp.array([2, -1]))  # -1 abstains
        >>> [round(float(v), 4) for v in loss]  # log 4, then 0
        [1.3863, 0.0]
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy needs logits [B, C] and labels [B]; got {logits.shape} and "
            f"{labels.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
    num_classes = logits.shape[1]
    if _is_concrete(labels):
        values = np.asarray(labels)
        too_big = values >= num_classes
        if too_big.any():
            i = _first_bad_row(too_big)
            raise ValueError(
                f"labels[{i}] = {int(values[i])} is not a class: logits have C = {num_classes} "
                f"classes, so labels must lie in [0, {num_classes}) (negative labels such as -1 "
                "mean 'abstain' and give loss 0)."
            )
    valid = (labels >= 0) & (labels < num_classes)
    # Gather at a safe index and mask afterwards: the gathered value stays finite, so the
    # masked rows get an exact 0 loss and an exact 0 gradient (no NaN from out-of-range).
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, safe[:, None], axis=1)[:, 0]
    return jnp.where(valid, nll, jnp.zeros_like(nll))


def soft_cross_entropy(logits: jax.typing.ArrayLike, probs: jax.typing.ArrayLike) -> jax.Array:
    """Per-example cross-entropy to a soft target distribution.

    ``-sum_c p_c log softmax(logits)_c``. A row of ``probs`` that is all zeros means "no
    target" and gives loss 0 with zero gradient (a batch mean then includes those zeros).

    When ``probs`` is concrete (not traced), every row must be finite and non-negative and
    sum to 1 (to within ``max(1e-3, eps)`` of its dtype) or be all zeros, else
    ``ValueError``. Inside ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` nothing is checked: the
    formula is applied as it stands, so a NaN or inf target gives a non-finite loss (which
    the training step :func:`amal_jax.step` detects and skips) and an unnormalised row a
    scaled one.

    Args:
        logits: ``[B, C]``.
        probs: ``[B, C]`` target probabilities (rows sum to 1, or are all 0).

    Returns:
        ``[B]``.

    Raises:
        ValueError: if the shapes differ or are not ``[B, C]``, or (concrete ``probs`` only)
            a row is non-finite, negative, or neither sums to 1 nor is all zeros.

    Example:
        >>> import jax.numpy as jnp
        >>> loss = soft_cross_entropy(jnp.zeros((2, 2)), jnp.array([[0.5, 0.5], [0.0, 0.0]]))
        >>> [round(float(v), 4) for v in loss]  # log 2, then "no target"
        [0.6931, 0.0]
    """
    logits = jnp.asarray(logits)
    probs = jnp.asarray(probs)
    if logits.ndim != 2 or probs.shape != logits.shape:
        raise ValueError(
            f"soft_cross_entropy needs logits and probs of one [B, C] shape; got {logits.shape} "
            f"and {probs.shape}."
        )
    if _is_concrete(probs):
        _check_probs(np.asarray(probs))
    # probs * (-log p), not -(probs * log p): an all-zero row gives +0.0, not -0.0.
    probs, neg_log_p = promote(probs, -jax.nn.log_softmax(logits))
    return jnp.sum(probs * neg_log_p, axis=1)


def _check_probs(p: np.ndarray) -> None:
    what = "soft_cross_entropy: probs"
    p64 = p.astype(np.float64)
    bad = ~np.isfinite(p64).all(axis=1)
    if bad.any():
        i = _first_bad_row(bad)
        raise ValueError(
            f"{what} row {i} is not finite: {_row_text(p[i])}; target probabilities must be finite."
        )
    bad = (p64 < 0).any(axis=1)
    if bad.any():
        i = _first_bad_row(bad)
        raise ValueError(
            f"{what} row {i} has a negative entry: {_row_text(p[i])}; target "
            "probabilities must be >= 0."
        )
    sums = p64.sum(axis=1)
    # Rounding each entry to the dtype moves a row sum by at most about eps (bfloat16: 8e-3).
    eps = float(jnp.finfo(p.dtype).eps) if jnp.issubdtype(p.dtype, jnp.floating) else 0.0
    tol = max(1e-3, eps)
    bad = (np.abs(sums - 1.0) > tol) & (sums != 0.0)
    if bad.any():
        i = _first_bad_row(bad)
        raise ValueError(
            f"{what} row {i} sums to {sums[i]:.6g}; each row must sum to 1 (within {tol:.0e}) "
            "or be all zeros (no target, loss 0)."
        )


def kd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    temperature: float = 4.0,
) -> jax.Array:
    """Per-example distillation loss ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et
    al.). The teacher's logits get no gradient.

    A teacher logit of ``-inf`` is a class the teacher rules out (probability 0): it is
    allowed and contributes nothing. When ``teacher_logits`` is concrete (not traced), a NaN
    or ``+inf``, or a row that is ``-inf`` throughout, raises a ``ValueError`` naming the
    first bad row. Inside ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` nothing can raise: such a
    teacher row gives a non-finite loss for that row, which the training step
    :func:`amal_jax.step` detects and skips.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``, finite or ``-inf``.
        temperature: ``T``, a finite Python number ``> 0``; the authors use 4.

    Returns:
        ``[B]``, non-negative.

    Raises:
        ValueError: if ``temperature`` is not a finite positive number, the shapes differ or
            are not ``[B, C]``, or (concrete teacher logits only) a teacher row is not finite.

    Example:
        >>> import jax.numpy as jnp
        >>> float(kd_loss(jnp.ones((1, 3)), jnp.ones((1, 3)))[0])
        0.0
    """
    if not isinstance(temperature, jax.core.Tracer) and not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a finite positive number; got {temperature!r}.")
    s = jnp.asarray(student_logits)
    t = jnp.asarray(teacher_logits)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(
            f"kd_loss needs student and teacher logits of one [B, C] shape; got {s.shape} and "
            f"{t.shape}."
        )
    if _is_concrete(t):
        values = np.asarray(t)
        values64 = values.astype(np.float64)
        bad = (np.isnan(values64) | (values64 == np.inf)).any(axis=1)
        bad |= (values64 == -np.inf).all(axis=1)
        if bad.any():
            i = _first_bad_row(bad)
            raise ValueError(
                f"kd_loss: teacher_logits row {i} is not finite: {_row_text(values[i])}; "
                "teacher logits must be finite or -inf (a class ruled out), with at least "
                "one finite entry (NaN or +inf has no softmax)."
            )
    t = jax.lax.stop_gradient(t)
    log_p_t = jax.nn.log_softmax(t / temperature)
    log_p_s = jax.nn.log_softmax(s / temperature)
    p_t = jnp.exp(log_p_t)
    p_t, log_p_t, log_p_s = promote(p_t, log_p_t, log_p_s)  # teacher and student dtypes may differ
    # A class with teacher probability 0 (logit -inf) contributes 0, not 0 * -inf.
    terms = jnp.where(p_t == 0, jnp.zeros_like(p_t), p_t * (log_p_t - log_p_s))
    kl = jnp.sum(terms, axis=1)
    return temperature**2 * kl


def stack_losses(*columns: jax.typing.ArrayLike) -> jax.Array:
    """Stacks ``K`` per-example loss vectors ``[B]`` into the ``[B, K]`` loss matrix.

    Example:
        >>> import jax.numpy as jnp
        >>> stack_losses(jnp.zeros(3), jnp.ones(3)).shape
        (3, 2)
    """
    if not columns:
        raise ValueError("stack_losses needs at least one [B] loss column.")
    cols = [jnp.asarray(c) for c in columns]
    shapes = {c.shape for c in cols}
    if len(shapes) != 1 or cols[0].ndim != 1:
        raise ValueError(f"every loss column must be [B] with one B; got shapes {sorted(shapes)}.")
    return jnp.stack(cols, axis=1)
