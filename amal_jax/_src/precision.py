"""Mixed precision: the model's forward and backward in a low-precision compute dtype.

With ``AmalConfig(compute_dtype=jnp.bfloat16)`` the parameters stay in their own dtype
(float32 master copies: the optimizer state, the look-ahead's update and the real update are
float32), and the user's loss functions see, at every call::

    params, batch  -> floating leaves cast to compute_dtype      (integer leaves: ids, labels)
    losses [B, K]  -> cast to promote(compute_dtype, float32)    (float32 for bfloat16)
    val loss  ()   -> cast likewise
    new model state -> cast back to the dtypes of the model state it replaces

so every matrix multiply, convolution and activation of the forward pass (and of its
linearisation, its transpose and the validation backward) runs in ``compute_dtype``, while
the loss matrix, the hypergradient ``G [B, K]``, the meta-optimizer and the mixer work in
float32. The casts are differentiable: the gradient with respect to a float32 parameter is
float32. Mutable model state (BatchNorm statistics) is passed in its own dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cast_floats", "check_compute_dtype", "in_compute_dtype", "output_dtype"]

PyTree = Any


def check_compute_dtype(value: Any) -> np.dtype | None:
    """``None`` or the floating dtype ``value`` names; ``ValueError`` otherwise.

    Example:
        >>> import jax.numpy as jnp
        >>> check_compute_dtype(jnp.bfloat16) == jnp.dtype("bfloat16")
        True
        >>> check_compute_dtype("int32")
        Traceback (most recent call last):
        ...
        ValueError: compute_dtype must be None or a floating dtype (jnp.bfloat16, ...
    """
    if value is None:
        return None
    allowed = "None or a floating dtype (jnp.bfloat16, jnp.float16, jnp.float32)"
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"compute_dtype must be {allowed}; got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute_dtype must be {allowed}; got {value!r} ({dtype}).")
    return dtype


def output_dtype(compute_dtype: np.dtype) -> np.dtype:
    """The dtype losses come back in: float32 for 16-bit compute, else the compute dtype."""
    return jnp.dtype(jnp.float32) if jnp.finfo(compute_dtype).bits < 32 else compute_dtype


def cast_floats(tree: PyTree, dtype: Any) -> PyTree:
    """``tree`` with its floating leaves cast to ``dtype`` (other leaves unchanged).

    Example:
        >>> import jax.numpy as jnp
        >>> out = cast_floats({"x": jnp.ones(2), "id": jnp.arange(2)}, jnp.bfloat16)
        >>> str(out["x"].dtype), str(out["id"].dtype)
        ('bfloat16', 'int32')
    """

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def _cast_like(new: PyTree, old: PyTree) -> PyTree:
    """``new`` cast leaf by leaf to the dtypes of ``old`` (when the structures agree)."""
    if old is None or jax.tree.structure(new) != jax.tree.structure(old):
        return new
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)), new, old)


def in_compute_dtype(train, val, compute_dtype, model_state):
    """The training and validation closures with the casts of the module docstring.

    Args:
        train: ``params -> (losses [B, K], new_model_state)``.
        val: ``params -> ()``, or ``None``.
        compute_dtype: a floating dtype, or ``None`` (then ``train`` and ``val`` are returned
            unchanged).
        model_state: the model state the closures were built with (its dtypes are those
            the new model state is cast back to).

    Returns:
        ``(train, val)``.
    """
    if compute_dtype is None:
        return train, val
    out = output_dtype(compute_dtype)

    def train_low(params):
        losses, new_model_state = train(cast_floats(params, compute_dtype))
        return jnp.asarray(losses).astype(out), _cast_like(new_model_state, model_state)

    def val_low(params):
        return jnp.asarray(val(cast_floats(params, compute_dtype))).astype(out)

    return train_low, (None if val is None else val_low)
