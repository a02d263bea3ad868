"""The public hypergradient: ``G = d L_V(theta'(w)) / d w`` for one batch, any optax optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from amal_jax._src.checks import (
    call_user,
    check_batch_not_empty,
    check_float_params,
    check_loss_matrix,
    check_optimizer,
    check_val_loss,
)
from amal_jax._src.estimators import Estimator, resolve_estimator
from amal_jax._src.lookahead import resolve_mask

__all__ = ["hypergradient"]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]
ValLossFn = Callable[[PyTree, Any], jax.Array]


def hypergradient(
    loss_fn: LossFn,
    val_loss_fn: ValLossFn,
    params: PyTree,
    weights: jax.typing.ArrayLike,
    train_batch: Any,
    val_batch: Any,
    *,
    optimizer: optax.GradientTransformation,
    opt_state: optax.OptState | None = None,
    estimator: str | Estimator = "autodiff",
    lookahead_mask: Any = None,
) -> jax.Array:
    """Exact derivative of the validation loss after a one-step look-ahead, per weight.

    ``G_ik = d L_V(theta'(w)) / d w_ik`` with
    ``theta'(w) = theta + M * optimizer.update(grad_theta (1/B) sum_ik w_ik l_ik(theta))``.
    For plain SGD with step ``eta`` this is
    ``G_ik = -(eta/B) < grad l_ik(theta), grad L_V(theta') >``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> [B, K]`` per-example, per-loss values.
        val_loss_fn: ``val_loss_fn(params, batch) -> ()`` scalar validation loss.
        params: model parameters ``theta`` (any pytree).
        weights: ``[B, K]`` mixing weights of this batch.
        train_batch: passed to ``loss_fn``.
        val_batch: passed to ``val_loss_fn``.
        optimizer: any ``optax.GradientTransformation``; the look-ahead is its update.
        opt_state: its state for ``params``; ``None`` means ``optimizer.init(params)``.
        estimator: ``"autodiff"`` (``jax.grad`` through the look-ahead), ``"jvp"`` (the
            linearisation identity, no second-order tape) or an :class:`amal_jax.Estimator`
            instance (e.g. ``amal_jax.JVP(remat=True)``). Both built-in ones are exact.
        lookahead_mask: ``None`` (every leaf moves), or a pytree of bools with the structure
            of ``params`` (or a callable ``params -> mask``): only ``True`` leaves move in the
            look-ahead, e.g. the classifier head. The result is the exact derivative of that
            restricted look-ahead.

    Returns:
        ``[B, K]`` hypergradient, same shape and dtype as ``weights``.

    Adaptive optimizers: the look-ahead's update is differentiated through
    :func:`~amal_jax.safe_derivatives`, so the hypergradient is finite with the defaults of
    ``optax.adam`` / ``adamw`` / ``rmsprop`` / ``adagrad`` and with global-norm clipping, even
    for parameters whose gradient is exactly zero. With a fresh Adam state
    (``opt_state=None``) the first update is ``-lr * g / (|g| + eps)``, close to
    ``-lr * sign(g)``, whose derivative ``lr * eps / (|g| + eps)**2`` is tiny where
    ``|g| >> eps`` (the hypergradient is then of the order of ``lr * eps``, about 1e-10 for
    ``optax.adam(1e-3)``) and up to ``lr / eps`` for an entry whose mixed gradient is near
    zero (per-example gradients that cancel), which then dominates: either way it carries
    little signal. Take it after some training steps (``warmup_steps`` in
    :class:`amal_jax.AmalConfig`). Sign-based optimizers (``optax.lion``) give a zero
    hypergradient: the derivative of ``sign`` is zero almost everywhere.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> loss_fn = lambda p, b: (b[:, None] * p - jnp.array([1.0, 2.0])) ** 2 / 2
        >>> val_loss_fn = lambda p, b: jnp.mean((b * p - 1.5) ** 2) / 2
        >>> x = jnp.array([1.0, 2.0])
        >>> G = hypergradient(loss_fn, val_loss_fn, jnp.float32(0.0), jnp.ones((2, 2)), x, x,
        ...                   optimizer=optax.sgd(0.1))
        >>> G.shape
        (2, 2)
    """
    strategy = resolve_estimator(estimator)
    check_float_params(params)  # before check_optimizer traces an update on the params
    check_optimizer(optimizer, params=params)
    weights = jnp.asarray(weights)
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise ValueError(f"weights must be floating point; got dtype {weights.dtype}.")
    check_batch_not_empty(train_batch, "training")
    check_batch_not_empty(val_batch, "validation")
    mask = resolve_mask(lookahead_mask, params)
    if opt_state is None:
        opt_state = optimizer.init(params)

    def train(p):
        what = "loss_fn(params, train_batch)"
        return check_loss_matrix(call_user(loss_fn, what, p, train_batch)), None

    def val(p):
        what = "val_loss_fn(params, val_batch)"
        return check_val_loss(call_user(val_loss_fn, what, p, val_batch))

    lin = strategy.linearize(train, params, mask)
    hyper_fn = strategy.hypergradient_fn(lin, train, val, params, optimizer, opt_state, mask)
    return hyper_fn(weights)[0]
