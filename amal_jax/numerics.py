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


def _masked(coefficient: jax.Array) -> jax.Array:
    """The local derivative, with its non-finite entries replaced by zero."""
    return jnp.where(jnp.isfinite(coefficient), coefficient, jnp.zeros_like(coefficient))


def _unary(primal_fn: Callable, coefficient_fn: Callable) -> Callable:
    """An elementwise op ``y = f(x)`` with derivative ``f'(x)`` zeroed where not finite."""

    @jax.custom_jvp
    def op(x):
        return primal_fn(x)

    @op.defjvp
    def op_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = primal_fn(x)
        return y, _masked(coefficient_fn(x, y)) * t

    return op


_safe_sqrt = _unary(jax.lax.sqrt, lambda x, y: 0.5 / y)
_safe_rsqrt = _unary(jax.lax.rsqrt, lambda x, y: -0.5 * y / x)
_safe_cbrt = _unary(jax.lax.cbrt, lambda x, y: y / (3.0 * x))
_safe_log = _unary(jax.lax.log, lambda x, y: 1.0 / x)


@jax.custom_jvp
def _safe_div(x, y):
    return jax.lax.div(x, y)


@_safe_div.defjvp
def _safe_div_jvp(primals, tangents):
    (x, y), (tx, ty) = primals, tangents
    out = jax.lax.div(x, y)
    return out, _masked(1.0 / y) * tx - _masked(out / y) * ty


@jax.custom_jvp
def _safe_pow(x, y):
    return jax.lax.pow(x, y)


@_safe_pow.defjvp
def _safe_pow_jvp(primals, tangents):
    (x, y), (tx, ty) = primals, tangents
    out = jax.lax.pow(x, y)
    tangent = _masked(y * jax.lax.pow(x, y - 1)) * tx
    if _is_float(y):  # an integer exponent has no tangent
        tangent = tangent + _masked(jnp.log(x) * out) * ty
    return out, tangent


def _safe_integer_pow(x, *, y):
    if y >= 0:
        return jax.lax.integer_pow(x, y)
    return _safe_pow_negative(x, y)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _safe_pow_negative(x, y):
    return jax.lax.integer_pow(x, y)


@_safe_pow_negative.defjvp
def _safe_pow_negative_jvp(y, primals, tangents):
    (x,), (t,) = primals, tangents
    return jax.lax.integer_pow(x, y), _masked(y * jax.lax.integer_pow(x, y - 1)) * t


_UNARY = {"sqrt": _safe_sqrt, "rsqrt": _safe_rsqrt, "cbrt": _safe_cbrt, "log": _safe_log}


def _safe_eqn(name: str, invals: list, params: dict):
    """The safe version of one equation, or ``None`` to bind the primitive unchanged."""
    if not all(_is_float(x) for x in invals[:1]):
        return None
    if name in _UNARY and not params.get("accuracy"):
        return [_UNARY[name](invals[0])]
    if name == "div":
        return [_safe_div(*invals)]
    if name == "pow":
        return [_safe_pow(*invals)]
    if name == "integer_pow" and params["y"] < 0:
        return [_safe_integer_pow(invals[0], y=params["y"])]
    return None


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
        outvals = _safe_eqn(name, invals, eqn.params)
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
