"""Non-finite values never reach the state: the checks that keep or discard an update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from amal_jax._src.numerics import promote

__all__ = ["guard_model_update", "keep_if", "like", "stays_finite"]

PyTree = Any


def stays_finite(new: PyTree, old: PyTree) -> jax.Array:
    """``[] bool``: no floating-point entry that was finite in ``old`` is non-finite in ``new``.

    An entry that was already non-finite (a "best loss so far" that starts at inf) is no
    reason to refuse an update.
    """
    checks = [
        jnp.all(jnp.isfinite(n) | ~jnp.isfinite(o))
        for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
        if jnp.issubdtype(getattr(n, "dtype", np.float32), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def like(new: PyTree, old: PyTree, what: str) -> PyTree:
    """``new`` with the tree structure of ``old`` (a dict for a FrozenDict, say)."""
    new_def, old_def = jax.tree.structure(new), jax.tree.structure(old)
    if new_def == old_def:
        return new
    if new_def.num_leaves != old_def.num_leaves:
        raise ValueError(
            f"the new {what} has a different tree structure from the state's: {new_def} "
            f"against {old_def}; return the same structure each step."
        )
    return jax.tree.unflatten(old_def, jax.tree.leaves(new))


def keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``ok``, else ``old`` (leaf by leaf; like ``optax.apply_if_finite``)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def guard_model_update(state, weights, losses, params, opt_state, model_state):
    """Discards a model update whose mixed loss is not finite or that breaks the state.

    Returns:
        ``(params, opt_state, model_state, skipped)``: the new values, or the state's own
        when the update was not finite (``skipped`` is then True).
    """
    weights, losses = promote(weights, losses)
    mixed = jnp.sum(weights * losses) / losses.shape[0]
    model_state = like(model_state, state.model_state, "model_state (from loss_fn)")
    ok = jnp.isfinite(mixed) & stays_finite(
        (params, opt_state, model_state), (state.params, state.opt_state, state.model_state)
    )
    params = keep_if(ok, params, state.params)
    opt_state = keep_if(ok, opt_state, state.opt_state)
    model_state = keep_if(ok, model_state, state.model_state)
    return params, opt_state, model_state, ~ok
