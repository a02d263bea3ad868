"""Eager and trace-time checks of what users pass in; each error names the problem."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "call_user",
    "check_batch_not_empty",
    "check_float_params",
    "check_int",
    "check_loss_matrix",
    "check_optimizer",
    "check_val_loss",
]


def check_int(name: str, value: Any, low: int) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def check_optimizer(optimizer: Any, name: str = "optimizer", params: Any = None) -> None:
    """Raises ``ValueError`` unless ``optimizer`` is a transformation the look-ahead can take.

    The look-ahead is one plain ``optimizer.update(grads, state, params)``. A transformation
    whose update needs further keyword arguments (``optax.lbfgs`` wants ``value``, ``grad``
    and ``value_fn`` for its line search, ``optax.polyak_sgd`` wants ``value``) cannot be
    used: a line search is not a step the hypergradient can differentiate. With ``params``
    the update is traced once (abstractly, no computation) to find out.

    Example:
        >>> import optax, jax.numpy as jnp
        >>> check_optimizer(optax.adam(1e-3), params=jnp.zeros(2))
        >>> check_optimizer(optax.lbfgs(), params=jnp.zeros(2))
        Traceback (most recent call last):
        ...
        ValueError: optimizer.update needs extra arguments: ...
    """
    if isinstance(optimizer, optax.MultiSteps):
        raise ValueError(
            f"{name} is an optax.MultiSteps (gradient accumulation): its updates are zero on "
            "every step but the k-th, so a one-step look-ahead would not move and the "
            "hypergradient would be zero. Accumulate outside amal_jax, or pass the inner "
            "optimizer."
        )
    if not isinstance(optimizer, optax.GradientTransformation):
        hint = " (call the factory, e.g. optax.adam(1e-3))" if callable(optimizer) else ""
        raise ValueError(
            f"{name} must be an optax.GradientTransformation{hint}; got {type(optimizer).__name__}."
        )
    if params is None:
        return
    try:
        jax.eval_shape(
            lambda p: optimizer.update(p, optimizer.init(p), p), jax.tree.map(jnp.asarray, params)
        )
    except TypeError as error:
        if "required keyword-only argument" not in str(error):
            raise
        raise ValueError(
            f"{name}.update needs extra arguments: {error}. amal_jax's look-ahead is one plain "
            "update(grads, state, params); a transformation that needs the loss value or a "
            "line search (optax.lbfgs, optax.polyak_sgd) cannot be differentiated as one "
            "step. Use a first-order optimizer (optax.sgd, optax.adam, optax.adamw, ...)."
        ) from None


def check_float_params(params: Any) -> None:
    """Raises ``ValueError`` when a parameter leaf is not floating point (naming its path)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"params leaf {jax.tree_util.keystr(path) or '(root)'} has dtype {dtype}: every "
                "parameter must be floating point (the look-ahead differentiates them). Keep "
                "integer or boolean state in model_state (stateful=True) or close over it."
            )


def check_loss_matrix(losses: Any, what: str = "loss_fn") -> jax.Array:
    """Checks that ``losses`` is a non-empty floating ``[B, K]`` matrix; returns it."""
    if isinstance(losses, (tuple, list)):
        raise ValueError(
            f"{what} returned a {type(losses).__name__} of {len(losses)} values; it must return "
            "the [B, K] loss matrix itself (with stateful=True, loss_fn(params, batch, "
            "model_state, key) returns (losses, new_model_state))."
        )
    losses = jnp.asarray(losses)
    if losses.ndim != 2:
        raise ValueError(
            f"{what} must return a [B, K] matrix of per-example, per-loss values; got shape "
            f"{losses.shape}."
        )
    if losses.shape[0] == 0:
        raise ValueError(
            f"the training batch is empty: {what} returned a loss matrix of shape "
            f"{losses.shape}; every batch needs at least one example."
        )
    if not jnp.issubdtype(losses.dtype, jnp.floating):
        raise ValueError(f"{what} must return floating-point losses; got dtype {losses.dtype}.")
    return losses


def check_val_loss(value: Any, what: str = "val_loss_fn") -> jax.Array:
    """Checks that a validation loss is one floating scalar; returns it."""
    if isinstance(value, (tuple, list)):
        raise ValueError(
            f"{what} returned a {type(value).__name__} of {len(value)} values; it must return "
            "one scalar, the mean loss on the validation batch."
        )
    value = jnp.asarray(value)
    if value.shape != ():
        raise ValueError(
            f"{what} must return a scalar (the mean loss on the validation batch); got shape "
            f"{value.shape}. Reduce the per-example losses, e.g. with jnp.mean."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{what} must return a floating-point scalar; got dtype {value.dtype}.")
    return value


def check_batch_not_empty(batch: Any, what: str) -> None:
    """Raises ``ValueError`` when any array leaf of ``batch`` has a leading dimension of 0."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = getattr(leaf, "shape", ())
        if len(shape) >= 1 and shape[0] == 0:
            raise ValueError(
                f"the {what} batch is empty: its leaf {jax.tree_util.keystr(path) or '(root)'} "
                f"has shape {tuple(shape)}; every batch needs at least one example."
            )


def call_user(fn: Callable, what: str, *args: Any) -> Any:
    """Calls a user's function; an exception it raises gets a note naming the function."""
    try:
        return fn(*args)
    except Exception as error:
        error.add_note(
            f"(raised inside {what}: check that the batch has the structure, shapes and dtypes "
            "that the function and the model expect)"
        )
        raise
