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

This module knows nothing about mixers, data or training state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amal_jax.numerics import safe_derivatives

__all__ = [
    "ESTIMATORS",
    "call_user",
    "check_batch_not_empty",
    "check_float_params",
    "check_loss_matrix",
    "check_optimizer",
    "check_val_loss",
    "LookaheadMask",
    "Linearization",
    "hypergradient",
    "linearize_losses",
    "lookahead",
    "resolve_mask",
]

ESTIMATORS = ("autodiff", "jvp")

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]
ValLossFn = Callable[[PyTree, Any], jax.Array]


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


def _check_losses(losses: jax.Array, weights: jax.Array) -> None:
    check_loss_matrix(losses)
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights must have the shape of the loss matrix {losses.shape}; got {weights.shape}."
        )


def _weighted_mean(weights: jax.Array, losses: jax.Array) -> jax.Array:
    """``(1/B) sum_ik w_ik l_ik``: the mixed training loss of one batch."""
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
    estimator: str = "autodiff",
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
        estimator: ``"autodiff"`` (``jax.grad`` through the look-ahead) or ``"jvp"`` (the
            linearisation identity, no second-order tape). Both are exact.
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
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
    check_optimizer(optimizer, params=params)
    weights = jnp.asarray(weights)
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise ValueError(f"weights must be floating point; got dtype {weights.dtype}.")
    check_float_params(params)
    check_batch_not_empty(train_batch, "training")
    check_batch_not_empty(val_batch, "validation")
    mask = resolve_mask(lookahead_mask, params)
    if opt_state is None:
        opt_state = optimizer.init(params)

    def train_losses(p):
        return check_loss_matrix(call_user(loss_fn, "loss_fn(params, train_batch)", p, train_batch))

    def val_loss(p):
        return check_val_loss(
            call_user(val_loss_fn, "val_loss_fn(params, val_batch)", p, val_batch)
        )

    if estimator == "autodiff":
        hyper, _ = hypergradient_autodiff(
            train_losses, val_loss, params, weights, optimizer, opt_state, mask
        )
        return hyper
    lin = linearize_losses(train_losses, params, mask=mask)
    hyper, _ = hypergradient_from_linearization(
        lin, val_loss, params, weights, optimizer, opt_state, mask
    )
    return hyper
