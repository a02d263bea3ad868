"""Hypergradient estimators as strategy objects: linearisation, remat and ``G`` in one place.

An estimator answers the three questions a training step asks of it:

- :meth:`Estimator.linearize`: the training forward pass at ``theta`` (losses ``[B, K]``,
  the model's auxiliary output, and the gradient of any weighted mix of the losses);
- :meth:`Estimator.hypergradient_fn`: ``weights -> (G [B, K], L_V(theta'(weights)))``;
- :meth:`Estimator.first_hypergradient_fn`: optionally, the first meta step's
  hypergradient from the plain update with the current weights, when that update can double
  as the first look-ahead (saving one optimizer update and its derivative); ``None`` when
  the estimator cannot use it.

Both built-in estimators are exact. A new estimator is a subclass, itself a frozen
dataclass (``@dataclasses.dataclass(frozen=True)``: configurations are compared and hashed
by value for jit's caches), whose ``linearize`` returns an :class:`amal_jax.Linearization`
(``jvp`` may be ``None`` if the estimator never reads it);
:class:`amal_jax.AmalConfig` and :func:`amal_jax.hypergradient` take an instance wherever
they take the names ``"jvp"`` / ``"autodiff"``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import optax

from amal_jax._src.lookahead import (
    Linearization,
    LookaheadMask,
    hypergradient_at_lookahead,
    hypergradient_autodiff,
    hypergradient_from_linearization,
    linearize_losses,
)

__all__ = ["ESTIMATORS", "JVP", "Autodiff", "Estimator", "resolve_estimator"]

PyTree = Any
# A training closure: params -> (losses [B, K], auxiliary output such as new model state).
TrainFn = Callable[[PyTree], tuple[jax.Array, Any]]
ValFn = Callable[[PyTree], jax.Array]
HyperFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Estimator(abc.ABC):
    """Abstract base of the hypergradient estimators (static, hashable, compared by value).

    A subclass implements :meth:`linearize` and :meth:`hypergradient_fn` (and optionally
    :meth:`first_hypergradient_fn`); the base cannot be instantiated.

    Attributes:
        remat: rematerialise the training forward pass (``jax.checkpoint``): every use
            recomputes it instead of keeping its activations.
    """

    remat: bool = False
    name: ClassVar[str] = ""

    def __post_init__(self):
        if not isinstance(self.remat, bool):
            raise ValueError(f"{type(self).__name__}: remat must be a bool; got {self.remat!r}.")

    def checkpointed(self, train: TrainFn) -> TrainFn:
        """``train``, rematerialised when :attr:`remat` (for a plain forward and backward)."""
        return jax.checkpoint(train) if self.remat else train

    @abc.abstractmethod
    def linearize(
        self, train: TrainFn, params: PyTree, mask: LookaheadMask | None = None
    ) -> Linearization:
        """The training forward pass at ``params`` and the transpose of its Jacobian."""

    @abc.abstractmethod
    def hypergradient_fn(
        self,
        lin: Linearization,
        train: TrainFn,
        val: ValFn,
        params: PyTree,
        optimizer: optax.GradientTransformation,
        opt_state: optax.OptState,
        mask: LookaheadMask | None = None,
    ) -> HyperFn:
        """``weights -> (G [B, K], L_V(theta'(weights)))`` at ``params``."""

    def first_hypergradient_fn(
        self,
        lin: Linearization,
        val: ValFn,
        lookahead_params: PyTree,
        update_vjp: Callable[[PyTree], tuple[PyTree]],
    ) -> HyperFn | None:
        """The first meta step's hypergradient from a look-ahead the step already has.

        ``lookahead_params`` is the plain update with the current weights (a full
        look-ahead) and ``update_vjp`` the VJP of that update with respect to its gradient.
        Returns ``weights -> (G, L_V)`` for those current weights, or ``None`` (the default)
        when the estimator computes its own look-ahead.
        """
        del lin, val, lookahead_params, update_vjp
        return None

    @property
    def shares_lookahead(self) -> bool:
        """Whether this estimator overrides :meth:`first_hypergradient_fn` (the step then
        computes the plain update's VJP for it; otherwise it skips that work)."""
        return type(self).first_hypergradient_fn is not Estimator.first_hypergradient_fn


@dataclasses.dataclass(frozen=True)
class JVP(Estimator):
    """The linearisation identity ``G = (1/B) J(theta) . P^T (M * grad L_V(theta'))``.

    One linearisation of the training forward pass gives the look-ahead's gradient (its
    transpose), the hypergradient (a JVP) and the real update; no second-order tape is
    built. With a full look-ahead the plain update is also the first look-ahead
    (:meth:`first_hypergradient_fn`).

    Example:
        >>> JVP().name, JVP(remat=True).remat
        ('jvp', True)
    """

    name: ClassVar[str] = "jvp"

    def linearize(self, train, params, mask=None):
        return linearize_losses(train, params, mask=mask, has_aux=True, remat=self.remat)

    def first_hypergradient_fn(self, lin, val, lookahead_params, update_vjp):
        def hyper(weights):
            del weights  # the mixer's current weights, those of the look-ahead
            return hypergradient_at_lookahead(lin, val, lookahead_params, update_vjp)

        return hyper

    def hypergradient_fn(self, lin, train, val, params, optimizer, opt_state, mask=None):
        del train  # the linearisation holds everything the identity needs

        def hyper(weights):
            return hypergradient_from_linearization(
                lin, val, params, weights, optimizer, opt_state, mask
            )

        return hyper


@dataclasses.dataclass(frozen=True)
class Autodiff(Estimator):
    """The reference: ``jax.grad`` with respect to the weights through the look-ahead.

    Example:
        >>> Autodiff().name
        'autodiff'
    """

    name: ClassVar[str] = "autodiff"

    def linearize(self, train, params, mask=None):
        del mask  # the look-ahead applies it; the real update needs every leaf's gradient
        losses, vjp_fn, aux = jax.vjp(self.checkpointed(train), params, has_aux=True)
        return Linearization(losses, None, vjp_fn, aux)

    def hypergradient_fn(self, lin, train, val, params, optimizer, opt_state, mask=None):
        del lin  # differentiates its own look-ahead
        train = self.checkpointed(train)

        def losses_only(p):
            return train(p)[0]

        def hyper(weights):
            return hypergradient_autodiff(
                losses_only, val, params, weights, optimizer, opt_state, mask
            )

        return hyper


_BY_NAME: dict[str, type[Estimator]] = {"autodiff": Autodiff, "jvp": JVP}
ESTIMATORS = tuple(_BY_NAME)


def resolve_estimator(estimator: Any, remat: bool = False) -> Estimator:
    """An :class:`Estimator` from a name (``"jvp"``, ``"autodiff"``) or an instance.

    ``remat=True`` turns rematerialisation on (an instance's own ``remat`` is kept if set).

    Example:
        >>> resolve_estimator("autodiff", remat=True)
        Autodiff(remat=True)
    """
    if isinstance(estimator, Estimator):
        return dataclasses.replace(estimator, remat=True) if remat else estimator
    if isinstance(estimator, str) and estimator in _BY_NAME:
        return _BY_NAME[estimator](remat=remat)
    raise ValueError(
        f"estimator must be one of {ESTIMATORS} or an amal_jax Estimator (amal_jax.JVP(), "
        f"amal_jax.Autodiff()); got {estimator!r}."
    )
