"""Learning to reweight, Meta-Weight-Net and fixed mixing, on AMAL's step interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from amal_jax.hypergradient import (
    check_float_params,
    check_optimizer,
    hypergradient_from_linearization,
    linearize_losses,
)
from amal_jax.mixing import global_weights, network
from amal_jax.step import (
    _TRAIN_STREAM,
    AmalConfig,
    AmalState,
    _as_typed_key,
    _copies,
    _counter_metrics,
    _guard_model_update,
    _loss_closures,
    _stream_key,
    _weight_metrics,
    _zero_counters,
)

__all__ = [
    "ReweightConfig",
    "fixed_mixing",
    "learning_to_reweight",
    "meta_weight_net",
    "reweight_init",
    "reweight_step",
]


@dataclasses.dataclass(frozen=True)
class ReweightConfig:
    """Static configuration of learning to reweight (Ren et al. 2018).

    The loss-function signatures are those of :class:`amal_jax.AmalConfig` (``stateful``
    selects the BatchNorm/dropout form).

    Attributes:
        loss_fn: per-example, per-loss training losses ``[B, K]``.
        val_loss_fn: scalar validation loss.
        optimizer: the model's optax optimizer (the look-ahead is one step of it).
        stateful: loss-function signatures, as in :class:`amal_jax.AmalConfig`.
    """

    loss_fn: Callable[..., Any]
    val_loss_fn: Callable[..., Any]
    optimizer: optax.GradientTransformation
    stateful: bool = False
    # Read by the shared loss plumbing of amal_jax.step; fixed for this method.
    remat: bool = dataclasses.field(default=False, init=False)
    estimator: str = dataclasses.field(default="jvp", init=False)

    def __post_init__(self):
        for name in ("loss_fn", "val_loss_fn"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable.")
        check_optimizer(self.optimizer)
        if not isinstance(self.stateful, bool):
            raise ValueError(f"stateful must be a bool; got {self.stateful!r}.")


jax.tree_util.register_pytree_node(ReweightConfig, lambda c: ((), c), lambda c, _: c)


def learning_to_reweight(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    stateful: bool = False,
) -> ReweightConfig:
    """Learning to reweight: fresh per-batch weights from one look-ahead at zero weights.

    Each step: ``G = d L_V(theta'(w)) / d w`` at ``w = 0`` (every example and loss column),
    then ``w = B * max(-G, 0) / sum(max(-G, 0))`` (all zeros when no entry is negative) and
    one optimizer step on ``(1/B) sum w_ik l_ik``. Run it with :func:`reweight_init` and
    :func:`reweight_step`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> cfg = learning_to_reweight(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1))
        >>> cfg.stateful
        False
    """
    return ReweightConfig(loss_fn, val_loss_fn, optimizer, stateful)


def reweight_init(
    config: ReweightConfig, params: Any, *, key: jax.Array, model_state: Any = None
) -> AmalState:
    """The initial state for :func:`reweight_step` (an :class:`amal_jax.AmalState` without mixer).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> cfg = learning_to_reweight(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1))
        >>> int(reweight_init(cfg, jnp.zeros(2), key=jax.random.key(0)).step)
        0
    """
    if not isinstance(config, ReweightConfig):
        raise ValueError(f"config must be a ReweightConfig; got {type(config).__name__}.")
    if not config.stateful and model_state is not None:
        raise ValueError("model_state was given but config.stateful is False.")
    check_float_params(params)
    check_optimizer(config.optimizer, params=params)
    params, model_state, key = _copies(params, model_state, _as_typed_key(key))
    return AmalState(
        **_zero_counters(),
        params=params,
        model_state=model_state,
        opt_state=config.optimizer.init(params),
        mix_params=None,
        meta_opt_state=None,
        key=key,
        config=config,
    )


def reweight_step(state: AmalState, train_batch: Any, val_batch: Any) -> tuple[AmalState, dict]:
    """One learning-to-reweight step (see :func:`learning_to_reweight`).

    Returns:
        ``(new_state, metrics)`` with the metrics of :func:`amal_jax.step`: ``loss``,
        ``loss_per_column``, weight statistics, ``val_loss_before`` (the look-ahead validation
        loss at zero weights), ``hypergradient_abs_mean``, ``meta_updated`` (always True),
        the skip flags and totals. A step whose hypergradient or look-ahead validation loss
        is not finite counts as a skipped meta update and makes no model update; a model
        update that is not finite is discarded, as in :func:`amal_jax.step`.

    Example:
        >>> # state, metrics = jax.jit(reweight_step)(state, train_batch, val_batch)
    """
    config = state.config
    if not isinstance(config, ReweightConfig):
        raise ValueError("reweight_step needs a state from reweight_init.")
    key = _stream_key(state, _TRAIN_STREAM, state.step)
    train, val = _loss_closures(config, state, train_batch, val_batch, key)
    lin = linearize_losses(train, state.params, has_aux=True)
    zeros = jnp.zeros_like(lin.losses)
    hyper, val_loss = hypergradient_from_linearization(
        lin, val, state.params, zeros, config.optimizer, state.opt_state
    )
    raw = jnp.maximum(-hyper, 0.0)
    total = jnp.sum(raw)
    batch = lin.losses.shape[0]
    weights = jnp.where(total > 0, raw * (batch / jnp.where(total > 0, total, 1.0)), 0.0)
    weights = jax.lax.stop_gradient(weights)
    meta_ok = (
        jnp.all(jnp.isfinite(hyper)) & jnp.isfinite(val_loss) & jnp.all(jnp.isfinite(lin.losses))
    )
    # Non-finite hypergradients give no weights: the model update is then discarded too.
    weights = jnp.where(meta_ok, weights, jnp.full_like(weights, jnp.nan))
    updates, opt_state = config.optimizer.update(lin.grad(weights), state.opt_state, state.params)
    params, opt_state, model_state, train_skipped = _guard_model_update(
        state, weights, lin.losses, optax.apply_updates(state.params, updates), opt_state, lin.aux
    )
    metrics = _weight_metrics(weights, lin.losses)
    metrics.update(
        val_loss_before=val_loss,
        hypergradient_abs_mean=jnp.mean(jnp.abs(hyper)),
        hypergradient_finite=jnp.all(jnp.isfinite(hyper)),
        meta_updated=jnp.asarray(True),
        meta_update_skipped=~meta_ok,
        train_update_skipped=train_skipped,
        invalid_ids=jnp.zeros((), jnp.int32),
        duplicate_ids=jnp.zeros((), jnp.int32),
    )
    new_state = state._replace(
        step=state.step + 1,
        meta_step=state.meta_step + 1,
        skipped_meta_updates=state.skipped_meta_updates + (~meta_ok).astype(jnp.int32),
        skipped_train_updates=state.skipped_train_updates + train_skipped.astype(jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
    )
    metrics.update(_counter_metrics(new_state))
    return new_state, metrics


def meta_weight_net(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    num_losses: int = 1,
    hidden: Sequence[int] = (100,),
    meta_optimizer: optax.GradientTransformation | None = None,
    stateful: bool = False,
    **options: Any,
) -> AmalConfig:
    """Meta-Weight-Net: an MLP maps each example's losses to weights in ``(0, 1)``.

    Shu et al. (2019) feed the loss of one (noisy) target through a one-hidden-layer MLP
    (100 units) with a sigmoid output, trained through the one-step look-ahead; here that is
    an :class:`amal_jax.AmalConfig` with a sigmoid :func:`amal_jax.network` mixer starting at
    weight 0.5, with the meta-optimizer Adam(1e-3) unless given.

    Args:
        loss_fn, val_loss_fn, optimizer: as for :class:`amal_jax.AmalConfig`.
        num_losses: ``K`` (1 in the original: the loss to the noisy label).
        hidden: hidden widths of the weighting network.
        meta_optimizer: optax optimizer for the network; default ``optax.adam(1e-3)``.
        stateful: loss-function signatures.
        **options: further :class:`amal_jax.AmalConfig` fields (``estimator``, schedule...).

    Returns:
        An :class:`amal_jax.AmalConfig`; run it with :func:`amal_jax.init` / :func:`amal_jax.step`.

    Example:
        >>> import optax
        >>> cfg = meta_weight_net(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1))
        >>> cfg.mixer.name
        'network'
    """
    return AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=network(
            num_losses,
            hidden=hidden,
            init=(0.5,) * num_losses,
            activation="sigmoid",
            max_weight=1.0,
        ),
        meta_optimizer=meta_optimizer or optax.adam(1e-3),
        stateful=stateful,
        **options,
    )


def fixed_mixing(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    weights: Sequence[float],
    *,
    stateful: bool = False,
) -> AmalConfig:
    """A fixed global mix ``sum_k weights[k] * l_k`` (the hand-tuned ``alpha``), never meta-updated.

    Example:
        >>> import optax
        >>> cfg = fixed_mixing(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1), (0.1, 0.9))
        >>> cfg.meta_every
        0
    """
    weights = tuple(float(w) for w in weights)
    if not weights or any(w < 0 for w in weights):
        raise ValueError(
            f"weights must be a non-empty sequence of non-negative floats; got {weights}."
        )
    high = max(max(weights), 1.0) * 2.0
    return AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=global_weights(len(weights), init=weights, clamp=(0.0, high)),
        meta_optimizer=optax.sgd(0.0),
        meta_every=0,
        stateful=stateful,
    )
