"""Learning to reweight (Ren et al. 2018) as an amal_jax method: fresh weights every batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from amal_jax._src.checks import check_optimizer
from amal_jax._src.closures import loss_closures
from amal_jax._src.estimators import JVP
from amal_jax._src.guards import guard_model_update
from amal_jax._src.methods import Engine, register
from amal_jax._src.metrics import counter_metrics, weight_metrics
from amal_jax._src.state import TRAIN_STREAM, AmalState, start, stream_key, zero_counters

__all__ = ["ReweightConfig", "learning_to_reweight"]


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
    one optimizer step on ``(1/B) sum w_ik l_ik``. Run it with :func:`amal_jax.init` and
    :func:`amal_jax.step`, as every method.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> cfg = learning_to_reweight(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1))
        >>> cfg.stateful
        False
    """
    return ReweightConfig(loss_fn, val_loss_fn, optimizer, stateful)


def _init(config: ReweightConfig, params: Any, key: Any, model_state: Any) -> AmalState:
    """The initial state: an :class:`amal_jax.AmalState` with no mixer (nothing is learned
    across steps, so ``mix_params`` and ``meta_opt_state`` are ``None``)."""
    params, model_state, key = start(config, params, key, model_state)
    return AmalState(
        **zero_counters(),
        params=params,
        model_state=model_state,
        opt_state=config.optimizer.init(params),
        mix_params=None,
        meta_opt_state=None,
        key=key,
        config=config,
    )


def _step(state: AmalState, train_batch: Any, val_batch: Any, meta: bool | None):
    """One learning-to-reweight step (see :func:`learning_to_reweight`).

    Returns:
        ``(new_state, metrics)`` with the metrics of :func:`amal_jax.step`: ``loss``,
        ``loss_per_column``, weight statistics, ``val_loss_before`` (the look-ahead validation
        loss at zero weights), ``hypergradient_abs_mean``, ``meta_updated`` (always True),
        the skip flags and totals. A step whose hypergradient or look-ahead validation loss
        is not finite counts as a skipped meta update and makes no model update; a model
        update that is not finite is discarded, as in :func:`amal_jax.step`.
    """
    if meta is False:
        raise ValueError(
            "learning to reweight computes its weights from a look-ahead on every step; "
            "meta=False has no meaning for it (pass meta=None or True)."
        )
    config = state.config
    key = stream_key(state, TRAIN_STREAM, state.step)
    train, val = loss_closures(config, state, train_batch, val_batch, key)
    strategy = JVP()  # the linearisation identity at w = 0 (its forward pass is the update's)
    lin = strategy.linearize(train, state.params)
    zeros = jnp.zeros_like(lin.losses)
    hyper_fn = strategy.hypergradient_fn(
        lin, train, val, state.params, config.optimizer, state.opt_state
    )
    hyper, val_loss = hyper_fn(zeros)
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
    params, opt_state, model_state, train_skipped = guard_model_update(
        state, weights, lin.losses, optax.apply_updates(state.params, updates), opt_state, lin.aux
    )
    metrics = weight_metrics(weights, lin.losses)
    metrics.update(
        val_loss_before=jnp.asarray(val_loss, jnp.float32),
        hypergradient_abs_mean=jnp.asarray(jnp.mean(jnp.abs(hyper)), jnp.float32),
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
    metrics.update(counter_metrics(new_state))
    return new_state, metrics


def _no_weights(what: str):
    def refuse(state, *args):
        raise ValueError(
            f"{what} needs learned weights; learning to reweight has none (its weights are "
            "computed afresh in every amal_jax.step)."
        )

    return refuse


register(
    ReweightConfig,
    Engine(
        init=_init,
        step=_step,
        meta_update=_no_weights("meta_update"),
        train_update=_no_weights("train_update"),
        schedule=lambda config, step_count: True,
    ),
)
