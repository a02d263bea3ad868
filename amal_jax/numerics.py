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
finite at the point where it is evaluated, a local derivative of zero instead:

- ``sqrt``, ``rsqrt``, ``cbrt``, ``log``, a negative ``integer_pow`` and ``pow`` at a zero
  (or, for ``pow``, negative) input, and ``div`` by zero, have derivative 0 there;
- everywhere else every derivative is the exact one.

At a point where the update is differentiable the result is therefore its exact derivative
(the ``sqrt`` of ``g**2`` at ``g = 0`` contributes the limit 0 of its product with
``dv/dg``); at a point where an operation's output is itself non-finite (a division by zero
inside a branch a ``select`` discards, as in ``optax.clip_by_global_norm`` of an all-zero
gradient) that operation contributes nothing, like the discarded branch. Sign-based
optimizers (``optax.lion``, sign SGD) have a zero derivative almost everywhere: their
hypergradient is zero, so a mixer does not learn through them.

The wrapper traces the optimizer's update to a jaxpr and evaluates it with these rules,
also inside nested ``jax.jit`` calls and ``lax.cond`` branches; operations inside other
control flow (``while``, ``scan``) keep JAX's own derivatives.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.extend import core as jex_core

__all__ = ["safe_derivatives"]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


# Elementwise primitives whose local derivative can be infinite or NaN at a point where
# they are evaluated: sqrt, rsqrt, cbrt and log at 0, a negative power of 0, pow's exponent
# derivative log(x) * x**y at x <= 0, a division by 0.
_GUARDED = frozenset({"sqrt", "rsqrt", "cbrt", "log", "div", "pow", "integer_pow"})


def _safe_primitive(primitive: jex_core.Primitive, params: dict) -> Callable:
    """``primitive`` whose partial derivatives are zero wherever JAX's own are not finite.

    Each partial derivative is JAX's own JVP rule, evaluated at the inputs where it is finite
    (so it is bitwise JAX's value there) and at inputs replaced by 1 elsewhere, where the
    result is then replaced by zero (so no inf or NaN reaches its transpose either).
    """

    def apply(*args):
        return primitive.bind(*args, **params)

    @jax.custom_jvp
    def op(*args):
        return apply(*args)

    @op.defjvp
    def op_jvp(primals, tangents):
        out = apply(*primals)
        tangent = jnp.zeros_like(out)
        for i, t in enumerate(tangents):
            if not _is_float(primals[i]):
                continue  # an integer exponent has no tangent

            def partial_at(args, i=i):
                return lambda x: apply(*args[:i], x, *args[i + 1 :])

            slope = jax.jvp(partial_at(primals), (primals[i],), (jnp.ones_like(primals[i]),))[1]
            finite = jnp.isfinite(slope)
            safe = [
                jnp.where(finite, a, jnp.ones((), jnp.result_type(a))) if _is_float(a) else a
                for a in primals
            ]
            t = jnp.broadcast_to(t, safe[i].shape).astype(safe[i].dtype)
            term = jax.jvp(partial_at(safe), (safe[i],), (t,))[1]
            tangent = tangent + jnp.where(finite, term, jnp.zeros_like(term))
        return out, tangent

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
        if outvals is None and name in ("jit", "pjit"):
            outvals = _eval_jaxpr(eqn.params["jaxpr"], *invals)
        elif outvals is None and name == "cond" and "branches" in eqn.params:
            branches = [partial(_eval_jaxpr, b) for b in eqn.params["branches"]]
            outvals = jax.lax.switch(invals[0], branches, *invals[1:])
        elif outvals is None:
            subfuns, bind_params = _bind_params(eqn)
            outvals = eqn.primitive.bind(*subfuns, *invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            if not isinstance(var, jex_core.DropVar):
                env[var] = value
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
