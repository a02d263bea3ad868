"""The AMAL engine: the meta update of the mixer, the model update, and the step of both.

One call of :func:`amal_step` does, in order::

    losses[B, K]  = loss_fn(theta, train_batch)                 # one forward pass, linearised
    weights[B, K] = mixer.apply(mix_params, train_batch, stop_gradient(losses))
    repeat meta_steps times (when the schedule says so):
        G = d L_V(theta'(weights)) / d weights                  # exact hypergradient
        mix_params <- meta_optimizer step on G chained through the mixer, then its constraint
    theta <- optimizer step on (1/B) sum w_ik l_ik with the new weights
             (or, with reuse_lookahead, theta <- the look-ahead theta'(old weights))

The public :func:`amal_jax.step` / :func:`amal_jax.meta_update` / :func:`amal_jax.train_update`
reach these through the method registry (:mod:`amal_jax._src.methods`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amal_jax._src.closures import loss_closures
from amal_jax._src.config import AmalConfig
from amal_jax._src.guards import guard_model_update, keep_if, stays_finite
from amal_jax._src.lookahead import resolve_mask, update_with_vjp
from amal_jax._src.methods import Engine, register
from amal_jax._src.metrics import (
    check_columns,
    counter_metrics,
    mixer_metrics,
    skipped_meta_metrics,
    weight_metrics,
)
from amal_jax._src.schedules import schedule_flag
from amal_jax._src.state import (
    META_STREAM,
    TRAIN_STREAM,
    AmalState,
    amal_init,
    stream_key,
)

__all__ = ["amal_meta_update", "amal_step", "amal_train_update"]


class _Outcome(NamedTuple):
    """What either branch of a step (with or without a meta update) hands to the guard."""

    params: Any  # the new model parameters
    opt_state: optax.OptState  # the model optimizer's new state
    weights: jax.Array  # [B, K] the weights of the model update
    mix_params: Any  # the mixer's (possibly meta-updated) params
    meta_opt_state: optax.OptState
    metrics: dict  # the meta metrics (NaN without a meta update)


def _meta_updates(config, state, train_batch, losses, hyper_fn, first_hyper_fn=None):
    """``meta_steps`` meta-optimizer steps on the mixer params, each with a fresh look-ahead.

    ``first_hyper_fn`` (optional) computes the first step's hypergradient from a look-ahead
    the caller already has. The steps are unrolled rather than scanned: XLA:CPU runs
    weight-gradient convolutions inside loop bodies tens of times slower.

    Returns:
        ``(mix_params, meta_opt_state, metrics)``.
    """
    mixer = config.mixer
    losses = jax.lax.stop_gradient(losses)
    mix_params, meta_opt_state = state.mix_params, state.meta_opt_state
    finite = jnp.asarray(True)
    # A NaN training loss can have a finite gradient (KD to a teacher logit of -inf): its
    # batch is still refused, as the model update refuses it.
    ok = jnp.all(jnp.isfinite(losses))
    for i in range(config.meta_steps):
        weights, mixer_vjp = jax.vjp(lambda m: mixer.apply(m, train_batch, losses), mix_params)
        fn = first_hyper_fn if i == 0 and first_hyper_fn is not None else hyper_fn
        hyper, val_loss = fn(weights)
        step_finite = jnp.all(jnp.isfinite(hyper))
        finite = finite & step_finite
        ok = ok & step_finite & jnp.isfinite(val_loss)
        scale = jnp.mean(jnp.abs(hyper))
        if config.normalize_hypergradient:
            hyper = hyper / jnp.maximum(scale, jnp.finfo(hyper.dtype).tiny)
            if not mixer.per_example:
                # Shared params: the batch mean, so that one meta learning rate means about
                # the same step of each weight as for the table (whose rows see one G each).
                hyper = hyper / hyper.shape[0]
        (grads,) = mixer_vjp(hyper.astype(weights.dtype))
        updates, meta_opt_state = config.meta_optimizer.update(grads, meta_opt_state, mix_params)
        updates = mixer.restrict_updates(updates, train_batch)
        mix_params = mixer.project(optax.apply_updates(mix_params, updates))
        if i == 0:
            # float32 whatever the loss dtypes, so both lax.cond branches agree (mixed precision).
            metrics = {
                "val_loss_before": jnp.asarray(val_loss, jnp.float32),
                "hypergradient_abs_mean": jnp.asarray(scale, jnp.float32),
            }
    # A meta update is all or nothing: any non-finite value discards every one of its steps.
    ok = ok & stays_finite((mix_params, meta_opt_state), (state.mix_params, state.meta_opt_state))
    mix_params = keep_if(ok, mix_params, state.mix_params)
    meta_opt_state = keep_if(ok, meta_opt_state, state.meta_opt_state)
    metrics["hypergradient_finite"] = finite
    metrics["meta_update_skipped"] = ~ok
    if config.track_val_after:
        weights = mixer.apply(mix_params, train_batch, losses)
        metrics["val_loss_after"] = jnp.asarray(hyper_fn(weights)[1], jnp.float32)
    return mix_params, meta_opt_state, metrics


def amal_meta_update(state: AmalState, train_batch: Any, val_batch: Any):
    """:func:`amal_jax.meta_update` for an :class:`AmalConfig`."""
    config = state.config
    strategy = config.strategy
    key = stream_key(state, META_STREAM, state.meta_step)
    train, val = loss_closures(config, state, train_batch, val_batch, key)
    mask = resolve_mask(config.lookahead_mask, state.params)
    lin = strategy.linearize(train, state.params, mask)
    losses = lin.losses
    check_columns(config.mixer, losses)
    hyper_fn = strategy.hypergradient_fn(
        lin, train, val, state.params, config.optimizer, state.opt_state, mask
    )
    mix_params, meta_opt_state, metrics = _meta_updates(
        config, state, train_batch, losses, hyper_fn
    )
    weights = config.mixer.apply(mix_params, train_batch, jax.lax.stop_gradient(losses))
    metrics.update(weight_metrics(weights, losses))
    metrics.update(mixer_metrics(config.mixer, train_batch))
    new_state = state._replace(
        meta_step=state.meta_step + 1,
        skipped_meta_updates=state.skipped_meta_updates
        + metrics["meta_update_skipped"].astype(jnp.int32),
        mix_params=mix_params,
        meta_opt_state=meta_opt_state,
    )
    metrics.update(counter_metrics(new_state))
    return new_state, metrics


def amal_train_update(state: AmalState, train_batch: Any):
    """:func:`amal_jax.train_update` for an :class:`AmalConfig`."""
    config = state.config
    key = stream_key(state, TRAIN_STREAM, state.step)
    train, _ = loss_closures(config, state, train_batch, None, key)
    train = config.strategy.checkpointed(train)
    losses, vjp_fn, new_model_state = jax.vjp(train, state.params, has_aux=True)
    check_columns(config.mixer, losses)
    weights = config.mixer.apply(state.mix_params, train_batch, jax.lax.stop_gradient(losses))
    (grads,) = vjp_fn(weights.astype(losses.dtype) / losses.shape[0])
    updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
    params, opt_state, model_state, skipped = guard_model_update(
        state,
        weights,
        losses,
        optax.apply_updates(state.params, updates),
        opt_state,
        new_model_state,
    )
    new_state = state._replace(
        step=state.step + 1,
        skipped_train_updates=state.skipped_train_updates + skipped.astype(jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
    )
    metrics = skipped_meta_metrics(config)
    metrics.update(weight_metrics(weights, losses))
    metrics["meta_updated"] = jnp.asarray(False)
    metrics["train_update_skipped"] = skipped
    metrics.update(mixer_metrics(config.mixer, train_batch))
    metrics.update(counter_metrics(new_state))
    return new_state, metrics


def amal_step(state: AmalState, train_batch: Any, val_batch: Any, meta: bool | None):
    """:func:`amal_jax.step` for an :class:`AmalConfig`."""
    config = state.config
    mixer, strategy = config.mixer, config.strategy
    key = stream_key(state, TRAIN_STREAM, state.step)
    train, val = loss_closures(config, state, train_batch, val_batch, key)
    mask = resolve_mask(config.lookahead_mask, state.params)
    do_meta = schedule_flag(config, state.step) if meta is None else meta
    optimizer, opt_state, params = config.optimizer, state.opt_state, state.params

    # One linearisation (jvp) or one VJP (autodiff) of the training forward pass at theta;
    # unmasked, since the real update needs every leaf's gradient.
    lin = strategy.linearize(train, params)
    losses, new_model_state = lin.losses, lin.aux
    check_columns(mixer, losses)

    sg_losses = jax.lax.stop_gradient(losses)
    old_weights = mixer.apply(state.mix_params, train_batch, sg_losses)

    # The plain update with the old weights: the whole step when there is no meta update,
    # the new parameters with reuse_lookahead, and (if the estimator can use it, with a full
    # look-ahead) the first look-ahead.
    hyper_fn = strategy.hypergradient_fn(lin, train, val, params, optimizer, opt_state, mask)
    first_hyper_fn = None
    if strategy.shares_lookahead and mask is None and do_meta is not False:
        old_updates, update_vjp, old_opt_state = update_with_vjp(
            optimizer, lin.grad(old_weights), opt_state, params
        )
        old_next = optax.apply_updates(params, old_updates)
        first_hyper_fn = strategy.first_hypergradient_fn(lin, val, old_next, update_vjp)
    if first_hyper_fn is None:
        old_updates, old_opt_state = optimizer.update(lin.grad(old_weights), opt_state, params)
        old_next = optax.apply_updates(params, old_updates)

    def with_meta(_) -> _Outcome:
        mix_params, meta_opt_state, metrics = _meta_updates(
            config, state, train_batch, losses, hyper_fn, first_hyper_fn
        )
        if config.reuse_lookahead:
            return _Outcome(
                old_next, old_opt_state, old_weights, mix_params, meta_opt_state, metrics
            )
        weights = mixer.apply(mix_params, train_batch, sg_losses)
        updates, new_opt_state = optimizer.update(lin.grad(weights), opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return _Outcome(new_params, new_opt_state, weights, mix_params, meta_opt_state, metrics)

    def without_meta(_) -> _Outcome:
        return _Outcome(
            old_next,
            old_opt_state,
            old_weights,
            state.mix_params,
            state.meta_opt_state,
            skipped_meta_metrics(config),
        )

    if do_meta is True:
        out = with_meta(None)
    elif do_meta is False:
        out = without_meta(None)
    else:
        out = jax.lax.cond(do_meta, with_meta, without_meta, None)
    new_params, new_opt_state, new_model_state, train_skipped = guard_model_update(
        state, out.weights, losses, out.params, out.opt_state, new_model_state
    )
    metrics = dict(out.metrics)
    metrics.update(weight_metrics(out.weights, losses))
    metrics["meta_updated"] = jnp.asarray(do_meta)
    metrics["train_update_skipped"] = train_skipped
    metrics.update(mixer_metrics(mixer, train_batch))
    new_state = state._replace(
        step=state.step + 1,
        meta_step=state.meta_step + jnp.asarray(do_meta, jnp.int32),
        skipped_meta_updates=state.skipped_meta_updates
        + metrics["meta_update_skipped"].astype(jnp.int32),
        skipped_train_updates=state.skipped_train_updates + train_skipped.astype(jnp.int32),
        params=new_params,
        model_state=new_model_state,
        opt_state=new_opt_state,
        mix_params=out.mix_params,
        meta_opt_state=out.meta_opt_state,
    )
    metrics.update(counter_metrics(new_state))
    return new_state, metrics


register(
    AmalConfig,
    Engine(
        init=amal_init,
        step=amal_step,
        meta_update=amal_meta_update,
        train_update=amal_train_update,
        schedule=schedule_flag,
    ),
)
