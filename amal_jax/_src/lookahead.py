"""The one-step look-ahead and the exact hypergradient of the mixing weights.

For a training batch of B examples with K per-example losses ``l[B, K]`` and mixing
weights ``w[B, K]``, the look-ahead is one step of the user's optax optimizer on the
weighted training loss::

    g(w)      = grad_theta (1/B) sum_ik w_ik l_ik(theta)
    theta'(w) = theta + M * u(M * g(w))        # u = optimizer.update, M = look-ahead mask
    G_ik      = d L_V(theta'(w)) / d w_ik      # the hypergradient, [B, K]

The look-ahead's update is differentiated through :func:`~amal_jax.safe_derivatives`:
where an elementary operation of the optimizer has no finite derivative (``sqrt(v)`` at
``v = 0`` in Adam with ``eps_root=0``, for a parameter whose gradient is exactly zero), its
local derivative is taken as zero, and everywhere else the derivative is exact. So Adam,
AdamW, RMSProp, Adagrad and chains with global-norm clipping give finite hypergradients with
their defaults.

Two estimators compute ``G`` exactly:

- ``"autodiff"``: ``jax.grad`` with respect to ``w`` through the look-ahead (the reference).
- ``"jvp"``: the identity ``G = (1/B) J(theta) . P^T (M * grad L_V(theta'))``, where ``J``
  is the Jacobian of the loss matrix and ``P^T`` the transpose of the optimizer update's
  Jacobian with respect to the gradient. One linearisation of the training forward pass
  gives the look-ahead gradient (its transpose) and the hypergradient (a JVP); no
  second-order tape is built.

:mod:`amal_jax._src.estimators` wraps them as strategy objects. This module knows nothing
about mixers, data or training state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amal_jax._src.checks import (
    check_loss_matrix,
)
from amal_jax._src.numerics import promote, safe_derivatives

__all__ = [
    "Linearization",
    "LookaheadMask",
    "hypergradient_at_lookahead",
    "hypergradient_autodiff",
    "hypergradient_from_linearization",
    "linearize_losses",
    "lookahead",
    "resolve_mask",
    "update_with_vjp",
]

PyTree = Any


class LookaheadMask:
    """A hashable, static mask over parameter leaves: which leaves move in the look-ahead.

    Built from a pytree of Python bools with the structure of the parameters (or from a
    callable ``params -> such a pytree``). Leaves marked ``False`` are frozen: they get no
    gradient in the look-ahead and the optimizer's update to them is dropped. The
    hypergradient is then the exact derivative of that restricted look-ahead (the
    authors' code uses the last linear layer only).

    Example:
        >>> params = {"body": {"w": 1.0}, "head": {"w": 2.0}}
        >>> mask = LookaheadMask({"body": {"w": False}, "head": {"w": True}})
        >>> mask.leaves
        (False, True)
    """

    __slots__ = ("leaves", "treedef")

    def __init__(self, mask: PyTree):
        leaves, treedef = jax.tree.flatten(mask)
        if not leaves:
            raise ValueError("lookahead_mask has no leaves: give one bool per parameter leaf.")
        bad = [leaf for leaf in leaves if not isinstance(leaf, bool)]
        if bad:
            raise ValueError(
                "lookahead_mask leaves must be Python bools (True = moves in the look-ahead); "
                f"got {type(bad[0]).__name__} {bad[0]!r}."
            )
        if not any(leaves):
            raise ValueError("lookahead_mask is all False: at least one parameter leaf must move.")
        self.leaves = tuple(leaves)
        self.treedef = treedef

    def check(self, params: PyTree) -> None:
        """Raises ``ValueError`` unless the mask has the structure of ``params``."""
        treedef = jax.tree.structure(params)
        if treedef != self.treedef:
            raise ValueError(
                "lookahead_mask must have the same tree structure as params; "
                f"mask: {self.treedef}, params: {treedef}."
            )

    def tree(self) -> PyTree:
        """The mask as a pytree of bools."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LookaheadMask)
            and self.leaves == other.leaves
            and self.treedef == other.treedef
        )

    def __hash__(self) -> int:
        return hash((self.leaves, self.treedef))

    def __repr__(self) -> str:
        return f"LookaheadMask({self.tree()!r})"


def resolve_mask(mask: Any, params: PyTree) -> LookaheadMask | None:
    """Turns a user's mask (None, pytree of bools, callable or LookaheadMask) into a checked one.

    Example:
        >>> resolve_mask(lambda p: {"a": True, "b": False}, {"a": 1.0, "b": 2.0}).leaves
        (True, False)
    """
    if mask is None:
        return None
    if callable(mask) and not isinstance(mask, LookaheadMask):
        mask = mask(params)
    if not isinstance(mask, LookaheadMask):
        mask = LookaheadMask(mask)
    mask.check(params)
    return mask


def _freeze(params: PyTree, mask: LookaheadMask | None) -> PyTree:
    """Stops gradients through the leaves the mask freezes (so no work is spent on them)."""
    if mask is None:
        return params
    leaves, treedef = jax.tree.flatten(params)
    pairs = zip(leaves, mask.leaves, strict=True)
    leaves = [p if m else jax.lax.stop_gradient(p) for p, m in pairs]
    return jax.tree.unflatten(treedef, leaves)


def _apply_mask(tree: PyTree, mask: LookaheadMask | None) -> PyTree:
    """Zeroes the leaves of ``tree`` (updates or cotangents) that the mask freezes."""
    if mask is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [x if m else jnp.zeros_like(x) for x, m in zip(leaves, mask.leaves, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def _check_losses(losses: jax.Array, weights: jax.Array) -> None:
    check_loss_matrix(losses)
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights must have the shape of the loss matrix {losses.shape}; got {weights.shape}."
        )


def _weighted_mean(weights: jax.Array, losses: jax.Array) -> jax.Array:
    """``(1/B) sum_ik w_ik l_ik``: the mixed training loss of one batch."""
    weights, losses = promote(weights, losses)
    return jnp.sum(weights * losses) / losses.shape[0]


def lookahead(
    params: PyTree,
    grads: PyTree,
    optimizer: optax.GradientTransformation,
    opt_state: optax.OptState,
    mask: LookaheadMask | None = None,
) -> tuple[PyTree, optax.OptState]:
    """One optimizer step from ``params`` along ``grads``, restricted to the mask's leaves.

    ``theta' = theta + M * optimizer.update(grads, opt_state, theta)``.

    Args:
        params: the parameters ``theta``.
        grads: gradient pytree with the structure of ``params``.
        optimizer: any ``optax.GradientTransformation``.
        opt_state: its state for ``params``.
        mask: optional mask (a :class:`LookaheadMask`, a pytree of bools with the structure
            of ``params``, or a callable returning one); frozen leaves do not move.

    Returns:
        ``(theta', new_opt_state)``.

    Example:
        >>> import optax, jax.numpy as jnp
        >>> sgd = optax.sgd(0.5)
        >>> new, _ = lookahead(jnp.ones(2), jnp.ones(2), sgd, sgd.init(jnp.ones(2)))
        >>> new.tolist()
        [0.5, 0.5]
    """
    mask = resolve_mask(mask, params)
    updates, new_state = safe_derivatives(optimizer).update(grads, opt_state, params)
    return optax.apply_updates(params, _apply_mask(updates, mask)), new_state


class Linearization(NamedTuple):
    """The training forward pass at ``theta``, linearised once and reused.

    Fields:
        losses: ``[B, K]`` per-example, per-loss values at ``theta``.
        jvp: ``tangent_params -> [B, K]``, the Jacobian-vector product ``J(theta) . t``.
        vjp: ``cotangent [B, K] -> params-shaped``, its transpose ``J(theta)^T c``.
        aux: whatever the loss function returned beside the losses (e.g. new BatchNorm
            statistics), or ``None``.
    """

    losses: jax.Array
    jvp: Callable[[PyTree], jax.Array]
    vjp: Callable[[jax.Array], PyTree]
    aux: Any

    def grad(self, weights: jax.Array) -> PyTree:
        """``grad_theta (1/B) sum_ik w_ik l_ik``: the gradient of the mixed loss."""
        (g,) = self.vjp(weights.astype(self.losses.dtype) / self.losses.shape[0])
        return g


def linearize_losses(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    *,
    mask: LookaheadMask | None = None,
    has_aux: bool = False,
    remat: bool = False,
) -> Linearization:
    """Linearises ``params -> losses [B, K]`` once: forward values, JVP and its transpose.

    Args:
        loss_fn: ``params -> [B, K]`` (or ``params -> ([B, K], aux)`` with ``has_aux``).
        params: where to linearise.
        mask: optional :class:`LookaheadMask`; frozen leaves get no tangent or cotangent.
        has_aux: whether ``loss_fn`` returns ``(losses, aux)``.
        remat: keep no activations: every JVP and VJP recomputes the forward pass (one
            forward more per use, memory of a single forward/backward at a time).

    Returns:
        A :class:`Linearization`.

    Example:
        >>> import jax.numpy as jnp
        >>> lin = linearize_losses(lambda p: (p * jnp.ones((2, 1))) ** 2, jnp.float32(3.0))
        >>> float(lin.grad(jnp.ones((2, 1))))  # d/dp (1/2) * 2 * p^2 = 2p
        6.0
    """

    def f(p):
        out = loss_fn(_freeze(p, mask))
        return out if has_aux else (out, None)

    if remat:
        # Every use recomputes the forward pass from parameters tied by an optimisation
        # barrier to that use's own (co)tangent, so XLA cannot merge the recomputations
        # (which would keep one set of activations alive and undo the rematerialisation).
        losses, aux = f(params)

        def vjp_fn(cotangent):
            primal, cotangent = jax.lax.optimization_barrier((params, cotangent))
            _, pull, _ = jax.vjp(f, primal, has_aux=True)
            return pull(cotangent)

        def jvp_fn(tangent):
            primal, tangent = jax.lax.optimization_barrier((params, tangent))
            return jax.jvp(lambda p: f(p)[0], (primal,), (tangent,))[1]

    else:
        losses, jvp_fn, aux = jax.linearize(f, params, has_aux=True)
        vjp_fn = jax.linear_transpose(jvp_fn, params)
    check_loss_matrix(losses)
    return Linearization(losses, jvp_fn, vjp_fn, aux)


def hypergradient_from_linearization(
    lin: Linearization,
    val_loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    weights: jax.Array,
    optimizer: optax.GradientTransformation,
    opt_state: optax.OptState,
    mask: LookaheadMask | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The exact hypergradient by the JVP identity, reusing a linearisation at ``theta``.

    ``G = (1/B) J(theta) . P^T (M * grad L_V(theta'))``, ``P^T`` by ``jax.vjp`` of the
    optimizer update with respect to the gradient.

    Returns:
        ``(G [B, K], L_V(theta'))``.
    """
    _check_losses(lin.losses, weights)
    # Masking g and q as well makes this exact for the restricted look-ahead even when the
    # linearisation covers every leaf (as it does inside `step`, where the real update
    # needs the full gradient) and the optimizer couples leaves (e.g. global-norm clipping).
    g = _apply_mask(lin.grad(weights), mask)
    updates, update_vjp, _ = update_with_vjp(optimizer, g, opt_state, params)
    new_params = optax.apply_updates(params, _apply_mask(updates, mask))
    hyper, val_loss = hypergradient_at_lookahead(lin, val_loss_fn, new_params, update_vjp, mask)
    return hyper.astype(weights.dtype), val_loss


def hypergradient_at_lookahead(
    lin: Linearization,
    val_loss_fn: Callable[[PyTree], jax.Array],
    new_params: PyTree,
    update_vjp: Callable[[PyTree], tuple[PyTree]],
    mask: LookaheadMask | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The JVP identity's second half, for a look-ahead ``theta'`` that is already computed.

    Args:
        lin: the linearisation of the training losses at ``theta``.
        val_loss_fn: ``params -> ()``.
        new_params: the look-ahead ``theta'``.
        update_vjp: the VJP of the optimizer's updates with respect to the gradient, taken
            at the look-ahead's gradient (from :func:`update_with_vjp`).
        mask: the look-ahead mask, if any.

    Returns:
        ``(G [B, K], L_V(theta'))``.
    """
    val_loss, val_grad = jax.value_and_grad(val_loss_fn)(new_params)
    (q,) = update_vjp(_apply_mask(val_grad, mask))
    return lin.jvp(_apply_mask(q, mask)) / lin.losses.shape[0], val_loss


def update_with_vjp(optimizer, grads, opt_state, params):
    """``optimizer.update`` at ``grads`` with the VJP of its updates with respect to ``grads``.

    The VJP is that of :func:`~amal_jax.safe_derivatives` (finite where the optimizer's own
    derivative is not); the values are those of ``optimizer.update``.

    Returns:
        ``(updates, update_vjp, new_opt_state)``.
    """
    safe = safe_derivatives(optimizer)

    def updates_of(gr):
        updates, new_state = safe.update(gr, opt_state, params)
        return updates, new_state

    updates, update_vjp, new_state = jax.vjp(updates_of, grads, has_aux=True)
    return updates, update_vjp, new_state


def hypergradient_autodiff(
    loss_fn: Callable[[PyTree], jax.Array],
    val_loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    weights: jax.Array,
    optimizer: optax.GradientTransformation,
    opt_state: optax.OptState,
    mask: LookaheadMask | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference: ``jax.grad`` with respect to the weights through the look-ahead.

    Returns:
        ``(G [B, K], L_V(theta'(w)))``.
    """

    def val_after(w):
        def mixed(p):
            losses = loss_fn(_freeze(p, mask))
            _check_losses(losses, w)
            return _weighted_mean(w.astype(losses.dtype), losses)

        grads = _apply_mask(jax.grad(mixed)(params), mask)
        new_params, _ = lookahead(params, grads, optimizer, opt_state, mask)
        return val_loss_fn(new_params)

    val_loss, hyper = jax.value_and_grad(val_after)(weights)
    return hyper, val_loss
