"""The static, validated configuration of an AMAL training run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from amal_jax._src.checks import check_int, check_optimizer
from amal_jax._src.estimators import Estimator, resolve_estimator
from amal_jax._src.lookahead import LookaheadMask
from amal_jax._src.mixers import Mixer
from amal_jax._src.precision import check_compute_dtype

__all__ = ["AmalConfig"]


@dataclasses.dataclass(frozen=True)
class AmalConfig:
    """Static configuration of an AMAL step, validated when built.

    Loss functions (``stateful=False``)::

        loss_fn(params, batch) -> [B, K]       per-example, per-loss values (column 0 is
                                               usually the loss to the label)
        val_loss_fn(params, batch) -> ()       scalar loss on clean validation data

    With ``stateful=True`` (BatchNorm statistics, dropout)::

        loss_fn(params, batch, model_state, key) -> ([B, K], new_model_state)
        val_loss_fn(params, batch, model_state) -> ()

    The look-ahead never changes ``model_state``; the new state comes from the training
    forward pass at the current parameters, exactly as in a plain training step.

    Attributes:
        loss_fn: per-example, per-loss training losses (see above).
        val_loss_fn: scalar validation loss (see above).
        optimizer: the model's optax optimizer; the look-ahead is one step of it, with its
            current state (so its step size is the current learning rate).
        mixer: a :class:`~amal_jax.Mixer` producing the weights.
        meta_optimizer: optax optimizer for the mixer params (the paper: ``optax.sgd(1500)``).
        meta_steps: meta-optimizer steps per meta update, each with a fresh look-ahead.
        meta_every: a meta update every this many training steps (after warm-up); 0 means
            :func:`step` never meta-updates (schedule meta updates with :func:`meta_update`).
        warmup_steps: training steps before the first meta update.
        estimator: ``"jvp"`` (default), ``"autodiff"`` or an :class:`amal_jax.Estimator`
            instance (see :func:`amal_jax.hypergradient`). Both built-in ones are exact;
            ``"jvp"`` shares the training forward pass and the first look-ahead with the
            model update, and with ``reuse_lookahead`` it measured 1.3x faster than
            ``"autodiff"`` on an H100 (ResNet-18, batch 256; ``benchmarks/RESULTS.md``).
            Stored as the object (a name becomes ``JVP()`` / ``Autodiff()``), also
            reachable as :attr:`strategy`.
        lookahead_mask: ``None`` or a pytree of bools / callable ``params -> mask``: only
            ``True`` leaves move in the look-ahead (e.g. the head).
        normalize_hypergradient: divide the hypergradient by its batch mean absolute value
            before chaining it into the mixer (one meta learning rate then fits many tasks).
            For a mixer whose params are shared by the batch (``Mixer.per_example`` False:
            global weights, a network) it is further divided by ``B``, so the meta gradient is
            the batch mean of the per-example contributions and one meta learning rate moves
            weights by about the same amount as a table's (a global weight moves by the mean
            of the table rows' moves). Without normalisation the meta gradient is the exact
            derivative of the look-ahead validation loss (a table entry's then carries a
            factor ``1/B`` that a global weight's does not).
        reuse_lookahead: the look-ahead ``theta'(weights before the meta update)`` becomes the
            new parameters, saving the final backward pass.
        remat: rematerialise (``jax.checkpoint``) the training forward pass to save memory.
            ``True`` turns the estimator's own ``remat`` on; after validation it mirrors the
            estimator's (to switch remat off on a config that has it, replace the estimator:
            ``config.replace(estimator=amal_jax.JVP())``).
        stateful: which loss-function signatures are used (see above).
        track_val_after: also report ``val_loss_after``, the look-ahead validation loss with
            the updated weights (one more look-ahead per meta update).
        compute_dtype: ``None`` (default: the loss functions see the parameters and batches
            as they are) or a floating dtype such as ``jnp.bfloat16`` for mixed precision:
            every call of ``loss_fn`` / ``val_loss_fn`` gets the parameters and the
            batch's floating leaves cast to it (integer leaves such as ids and labels stay),
            so the model's forward and backward passes run in it, and the losses are cast
            back to float32. The parameters, optimizer states, look-ahead update,
            hypergradient and mixer stay float32 (master copies); the model state is passed
            in its own dtype and the new one cast back to it. Stored as a ``numpy.dtype``.
    """

    loss_fn: Callable[..., Any]
    val_loss_fn: Callable[..., Any]
    optimizer: optax.GradientTransformation
    mixer: Mixer
    meta_optimizer: optax.GradientTransformation
    meta_steps: int = 1
    meta_every: int = 1
    warmup_steps: int = 0
    estimator: str | Estimator = "jvp"
    lookahead_mask: Any = None
    normalize_hypergradient: bool = False
    reuse_lookahead: bool = False
    remat: bool = False
    stateful: bool = False
    track_val_after: bool = False
    compute_dtype: Any = None

    def __post_init__(self):
        for name in ("loss_fn", "val_loss_fn"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable.")
        for name in ("optimizer", "meta_optimizer"):
            check_optimizer(getattr(self, name), name)
        if not isinstance(self.mixer, Mixer):
            raise ValueError(
                "mixer must be an amal_jax Mixer (amal_jax.table, amal_jax.network, "
                f"amal_jax.global_weights); got {type(self.mixer).__name__}."
            )
        check_int("meta_steps", self.meta_steps, 1)
        check_int("meta_every", self.meta_every, 0)
        check_int("warmup_steps", self.warmup_steps, 0)
        if self.meta_every == 0 and self.warmup_steps:
            raise ValueError(
                "warmup_steps has no effect with meta_every=0 (step never meta-updates); "
                "set warmup_steps=0 and schedule meta_update yourself."
            )
        mask = self.lookahead_mask
        if mask is not None and not callable(mask) and not isinstance(mask, LookaheadMask):
            object.__setattr__(self, "lookahead_mask", LookaheadMask(mask))
        if self.reuse_lookahead and self.lookahead_mask is not None:
            raise ValueError(
                "reuse_lookahead needs a look-ahead of every parameter; it cannot be combined "
                "with lookahead_mask (the frozen leaves would never be trained)."
            )
        for name in (
            "normalize_hypergradient",
            "reuse_lookahead",
            "remat",
            "stateful",
            "track_val_after",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool; got {getattr(self, name)!r}.")
        object.__setattr__(self, "compute_dtype", check_compute_dtype(self.compute_dtype))
        # Normalised: the estimator becomes its object (remat=True turns its remat on) and
        # remat mirrors it, so equal settings give equal (and equally hashed) configs.
        strategy = resolve_estimator(self.estimator, self.remat)
        object.__setattr__(self, "estimator", strategy)
        object.__setattr__(self, "remat", strategy.remat)

    @property
    def strategy(self) -> Estimator:
        """The hypergradient :class:`~amal_jax.Estimator` (the normalised ``estimator``)."""
        return self.estimator

    def replace(self, **changes: Any) -> AmalConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# The configuration is static: no leaves, compared by value, part of the tree structure.
jax.tree_util.register_pytree_node(AmalConfig, lambda c: ((), c), lambda c, _: c)
