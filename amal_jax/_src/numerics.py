"""Finite derivatives of an optimizer update, for look-aheads through Adam and friends.

The hypergradient differentiates one optimizer update with respect to its gradient. Adaptive
optimizers compute ``m / (sqrt(v) + eps)`` with ``v = b2 * v + (1 - b2) * g**2``; where a
gradient entry and its second moment are both exactly zero (a fresh state, a dead ReLU
unit, an unused embedding row), the chain rule multiplies ``d sqrt(v) / dv = inf`` by
``dv / dg = 0`` and the derivative is NaN, although the update itself is differentiable there
(``g / (|g| + eps)`` has derivative ``1 / eps`` at 0). Global-norm clipping then spreads one
NaN to every entry.

:func:`safe_derivatives` wraps an optimizer so that its update computes the same values,
but differentiating it uses, for each elementary operation whose local derivative is not
finite at the point where it is evaluated, a local derivative of zero instead (``sqrt``,
``rsqrt``, ``cbrt``, ``log``, ``log1p``, ``div``, ``pow``, negative ``integer_pow``,
``asin``, ``acos``, ``atanh``, ``atan2``, ``tan``, ``erf_inv`` at their singular points);
every other local derivative is JAX's own.

So the result equals the exact derivative wherever JAX's own is finite. At a point where an
operation's derivative is infinite it drops that operation's contribution: this is the exact
derivative when that contribution is an infinite factor times a factor that is exactly zero
(``sqrt`` of ``v = g**2`` at ``g = 0`` in Adam, RMSProp and AdaBelief, the norm of an
all-zero gradient in ``clip_by_global_norm``: the cases the tests check against float64
finite differences), and in general it is not (``cbrt(g)**3`` at 0 gets derivative 0, not
1). At a point where an operation's output is itself non-finite (a division by zero in a
branch that a ``select`` discards) that operation contributes nothing, like the discarded
branch. Sign-based optimizers (``optax.lion``, sign SGD) have a zero derivative almost
everywhere: their hypergradient is zero, so a mixer does not learn through them. Only first
derivatives are made safe (all that a look-ahead needs).

The wrapper traces the optimizer's update to a jaxpr and evaluates it with these rules,
also inside nested ``jax.jit`` calls, ``jax.checkpoint`` bodies and ``lax.cond`` branches;
operations inside other control flow (``while``, ``scan``) and inside the bodies of custom
derivative rules keep JAX's own derivatives.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jex_core

__all__ = ["promote", "safe_derivatives"]


def promote(*arrays: jax.typing.ArrayLike) -> tuple[jax.Array, ...]:
    """``arrays`` cast to the dtype JAX's standard promotion gives them together.

    Mixed precision is legitimate input (bfloat16 losses with float32 weights, teacher logits
    kept in a lower precision than the student's). The library casts such operands
    explicitly, to the dtype implicit promotion would have chosen, so that its results are
    the same and it also runs under ``jax_numpy_dtype_promotion="strict"``.
    """
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*arrays)
    return tuple(jnp.asarray(x, dtype) for x in arrays)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


# Elementwise primitives whose local derivative can be infinite or NaN at a point where
# they are evaluated: sqrt, rsqrt, cbrt and log at 0, a negative power of 0, pow's exponent
# derivative log(x) * x**y at x <= 0, a division by 0, log1p at -1, asin / acos / atanh /
# erf_inv at +-1, atan2 at (0, 0), tan at its poles.
_GUARDED = frozenset(
    {
        "sqrt",
        "rsqrt",
        "cbrt",
        "log",
        "log1p",
        "div",
        "pow",
        "integer_pow",
        "asin",
        "acos",
        "atanh",
        "atan2",
        "tan",
        "erf_inv",
    }
)


def _safe_primitive(primitive: jex_core.Primitive, params: dict) -> Callable:
    """``primitive`` whose partial derivatives are zero wherever JAX's own are not finite.

    Each partial derivative is JAX's own (a JVP with unit tangent), with its non-finite
    entries replaced by zero; the tangent is their product with the input tangents, so the
    transpose multiplies cotangents by finite numbers only. Inputs with no tangent (literals,
    constants, the optimizer state's counters) cost nothing.
    """

    def apply(*args):
        return primitive.bind(*args, **params)

    @jax.custom_jvp
    def op(*args):
        return apply(*args)

    def op_jvp(primals, tangents):
        out = apply(*primals)
        tangent = jnp.zeros_like(out)
        for i, t in enumerate(tangents):
            if isinstance(t, SymbolicZero) or not _is_float(primals[i]):
                continue

            def along(x, i=i):
                return apply(*primals[:i], x, *primals[i + 1 :])

            slope = jax.jvp(along, (primals[i],), (jnp.ones_like(primals[i]),))[1]
            slope = jnp.where(jnp.isfinite(slope), slope, jnp.zeros_like(slope))
            tangent = tangent + slope * t
        return out, tangent

    op.defjvp(op_jvp, symbolic_zeros=True)
    return op


def _safe_eqn(name: str, invals: list, eqn: Any):
    """The safe version of one equation, or ``None`` to bind the primitive unchanged."""
    if name not in _GUARDED or not _is_float(invals[0]):
        return None
    if name == "integer_pow" and eqn.params["y"] >= 0:
        return None  # x**n with n >= 0 has a finite derivative everywhere
    return [_safe_primitive(eqn.primitive, eqn.params)(*invals)]


def _bind_params(eqn) -> tuple[list, dict]:
    """``(subfuns, params)`` to bind an equation's primitive (older JAX returns both)."""
    out = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(out, tuple):
        subfuns, params = out
        return list(subfuns), params
    return [], out


def _eval_jaxpr(closed: jex_core.ClosedJaxpr, *args: Any) -> list:
    """Evaluates a closed jaxpr with the safe derivative rules (a custom interpreter)."""
    jaxpr = closed.jaxpr
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, jex_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, closed.consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        outvals = _safe_eqn(name, invals, eqn)
        if outvals is None and name in ("jit", "pjit", "closed_call"):
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            outvals = _eval_jaxpr(inner, *invals)
        elif outvals is None and name in ("checkpoint", "remat", "remat2"):
            # A rematerialised body (jax.checkpoint): evaluated inline, so its operations get
            # the safe rules too (the update of an optimizer is cheap to keep in memory).
            outvals = _eval_jaxpr(jex_core.ClosedJaxpr(eqn.params["jaxpr"], ()), *invals)
        elif outvals is None and name == "cond" and "branches" in eqn.params:
            branches = [partial(_eval_jaxpr, b) for b in eqn.params["branches"]]
            outvals = jax.lax.switch(invals[0], branches, *invals[1:])
        elif outvals is None:
            subfuns, bind_params = _bind_params(eqn)
            outvals = eqn.primitive.bind(*subfuns, *invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            env[var] = value  # a dropped output (DropVar) is written and never read
    return [read(v) for v in jaxpr.outvars]


def safe_derivatives(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """The same optimizer, with finite derivatives of its update (see the module docstring).

    The wrapped update returns exactly the values of ``optimizer.update``; only its
    derivatives change, and only where the original ones are not finite. The look-ahead of
    :func:`amal_jax.hypergradient` and :func:`amal_jax.step` always goes through it, so
    ``optax.adam(lr)`` (``eps_root=0``), ``optax.adamw``, ``optax.rmsprop``,
    ``optax.adagrad`` and chains with ``optax.clip_by_global_norm`` give finite
    hypergradients even with parameters whose gradient is exactly zero.

    Args:
        optimizer: any ``optax.GradientTransformation`` whose ``update(updates, state,
            params)`` needs no further arguments.

    Returns:
        An ``optax.GradientTransformation`` with the same ``init``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> adam = optax.adam(0.1)  # eps_root = 0
        >>> g = jnp.array([0.0, 1.0])  # the first entry has no gradient yet
        >>> def first_update(opt, g):
        ...     return opt.update(g, opt.init(g), g)[0][0]
        >>> float(jax.grad(first_update, argnums=1)(adam, g)[0])  # inf * 0
        nan
        >>> d = jax.grad(first_update, argnums=1)(safe_derivatives(adam), g)[0]  # -0.1 / eps
        >>> round(float(d) / 1e7, 4)
        -1.0
    """

    def update_fn(updates, state, params=None):
        def run(u, s, p):
            return optimizer.update(u, s, p)

        closed, out_shape = jax.make_jaxpr(run, return_shape=True)(updates, state, params)
        flat = _eval_jaxpr(closed, *jax.tree.leaves((updates, state, params)))
        return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

    return optax.GradientTransformation(optimizer.init, update_fn)
