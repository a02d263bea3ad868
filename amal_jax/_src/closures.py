"""The user's loss functions as closures over one batch, for every method's engine."""

from __future__ import annotations

from typing import Any

from amal_jax._src.checks import (
    call_user,
    check_batch_not_empty,
    check_loss_matrix,
    check_val_loss,
)
from amal_jax._src.precision import cast_floats, in_compute_dtype
from amal_jax._src.state import AmalState

__all__ = ["loss_closures"]


def loss_closures(config: Any, state: AmalState, train_batch, val_batch, key):
    """Training losses ``params -> ([B, K], new_model_state)``; validation ``params -> ()``.

    Shared by every method with AMAL's loss-function signatures (``config.loss_fn``,
    ``config.val_loss_fn``, ``config.stateful``); the estimator decides about remat. With a
    ``config.compute_dtype`` the functions see parameters and batches in that dtype and the
    losses come back in float32 (:mod:`amal_jax._src.precision`).
    """
    model_state = state.model_state
    check_batch_not_empty(train_batch, "training")
    if val_batch is not None:
        check_batch_not_empty(val_batch, "validation")
    compute_dtype = getattr(config, "compute_dtype", None)
    if compute_dtype is not None:
        train_batch = cast_floats(train_batch, compute_dtype)
        val_batch = None if val_batch is None else cast_floats(val_batch, compute_dtype)

    if config.stateful:

        def train(params):
            what = "loss_fn(params, train_batch, model_state, key)"
            out = call_user(config.loss_fn, what, params, train_batch, model_state, key)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(
                    "with stateful=True, loss_fn must return (losses [B, K], new_model_state); "
                    f"got {type(out).__name__}."
                )
            return check_loss_matrix(out[0]), out[1]

        def val(params):
            what = "val_loss_fn(params, val_batch, model_state)"
            return check_val_loss(
                call_user(config.val_loss_fn, what, params, val_batch, model_state)
            )

    else:

        def train(params):
            what = "loss_fn(params, train_batch)"
            return check_loss_matrix(
                call_user(config.loss_fn, what, params, train_batch)
            ), model_state

        def val(params):
            what = "val_loss_fn(params, val_batch)"
            return check_val_loss(call_user(config.val_loss_fn, what, params, val_batch))

    return in_compute_dtype(train, val, compute_dtype, model_state)
