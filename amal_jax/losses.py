"""Per-example loss helpers. Each returns ``[B]`` values; stack them into the ``[B, K]`` matrix.

Weighting and reduction are explicit and belong to the caller (the step mixes columns with
the learned weights and averages over the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy", "kd_loss", "soft_cross_entropy", "stack_losses"]


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Per-example cross-entropy to integer labels.

    Args:
        logits: ``[B, C]``.
        labels: ``[B]`` integers in ``[0, C)``.

    Returns:
        ``[B]``: ``-log softmax(logits)[label]``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))[0]), 4)  # log 4
        1.3863
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
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def soft_cross_entropy(logits: jax.typing.ArrayLike, probs: jax.typing.ArrayLike) -> jax.Array:
    """Per-example cross-entropy to a soft target distribution.

    ``-sum_c p_c log softmax(logits)_c``.

    Args:
        logits: ``[B, C]``.
        probs: ``[B, C]`` target probabilities (rows sum to 1).

    Returns:
        ``[B]``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(soft_cross_entropy(jnp.zeros((1, 2)), jnp.array([[0.5, 0.5]]))[0]), 4)
        0.6931
    """
    logits = jnp.asarray(logits)
    probs = jnp.asarray(probs)
    if logits.ndim != 2 or probs.shape != logits.shape:
        raise ValueError(
            f"soft_cross_entropy needs logits and probs of one [B, C] shape; got {logits.shape} "
            f"and {probs.shape}."
        )
    return -jnp.sum(probs * jax.nn.log_softmax(logits), axis=1)


def kd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    temperature: float = 4.0,
) -> jax.Array:
    """Per-example distillation loss ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et
    al.). The teacher's logits get no gradient.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        temperature: ``T > 0``; the authors use 4.

    Returns:
        ``[B]``, non-negative.

    Example:
        >>> import jax.numpy as jnp
        >>> float(kd_loss(jnp.ones((1, 3)), jnp.ones((1, 3)))[0])
        0.0
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}.")
    s = jnp.asarray(student_logits)
    t = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(
            f"kd_loss needs student and teacher logits of one [B, C] shape; got {s.shape} and "
            f"{t.shape}."
        )
    log_p_t = jax.nn.log_softmax(t / temperature)
    log_p_s = jax.nn.log_softmax(s / temperature)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=1)
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
