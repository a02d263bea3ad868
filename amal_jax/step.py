"""The AMAL training step: meta update of the mixer, then the model update.

One call of :func:`step` does, in order::

    losses[B, K]  = loss_fn(theta, train_batch)                 # one forward pass, linearised
    weights[B, K] = mixer.apply(mix_params, train_batch, stop_gradient(losses))
    repeat meta_steps times (when the schedule says so):
        G = d L_V(theta'(weights)) / d weights                  # exact hypergradient
        mix_params <- meta_optimizer step on G chained through the mixer, then its constraint
    theta <- optimizer step on (1/B) sum w_ik l_ik with the new weights
             (or, with reuse_lookahead, theta <- the look-ahead theta'(old weights))

Everything is pure and ``jax.jit``-able; the configuration is static and travels inside the
state, so ``jax.jit(amal_jax.step)`` and ``jax.vmap(amal_jax.step)`` work as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amal_jax.hypergradient import (
    ESTIMATORS,
    Linearization,
    LookaheadMask,
    call_user,
    check_batch_not_empty,
    check_float_params,
    check_loss_matrix,
    check_optimizer,
    check_val_loss,
    hypergradient_at_lookahead,
    hypergradient_autodiff,
    hypergradient_from_linearization,
    linearize_losses,
    resolve_mask,
    update_with_vjp,
)
from amal_jax.mixing import Mixer, paper_init_weights, table

__all__ = [
    "AmalConfig",
    "AmalState",
    "check_batch",
    "init",
    "is_meta_step",
    "is_refresh_epoch",
    "meta_update",
    "paper_preset",
    "step",
    "train_update",
]

PyTree = Any

# Key streams derived from the state's key: the training forward of step s uses
# fold_in(fold_in(key, TRAIN), s); a stand-alone meta update number m uses
# fold_in(fold_in(key, META), m).
_TRAIN_STREAM = 0
_META_STREAM = 1


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


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
        mixer: a :class:`~amal_jax.mixing.Mixer` producing the weights.
        meta_optimizer: optax optimizer for the mixer params (the paper: ``optax.sgd(1500)``).
        meta_steps: meta-optimizer steps per meta update, each with a fresh look-ahead.
        meta_every: a meta update every this many training steps (after warm-up); 0 means
            :func:`step` never meta-updates (schedule meta updates with :func:`meta_update`).
        warmup_steps: training steps before the first meta update.
        estimator: ``"jvp"`` (default) or ``"autodiff"`` (see :func:`amal_jax.hypergradient`).
            Both are exact; ``"jvp"`` shares the training forward pass and the first
            look-ahead with the model update, and with ``reuse_lookahead`` it measured 1.3x
            faster than ``"autodiff"`` on an H100 (ResNet-18, batch 256;
            ``benchmarks/RESULTS.md``).
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
        stateful: which loss-function signatures are used (see above).
        track_val_after: also report ``val_loss_after``, the look-ahead validation loss with
            the updated weights (one more look-ahead per meta update).
    """

    loss_fn: Callable[..., Any]
    val_loss_fn: Callable[..., Any]
    optimizer: optax.GradientTransformation
    mixer: Mixer
    meta_optimizer: optax.GradientTransformation
    meta_steps: int = 1
    meta_every: int = 1
    warmup_steps: int = 0
    estimator: str = "jvp"
    lookahead_mask: Any = None
    normalize_hypergradient: bool = False
    reuse_lookahead: bool = False
    remat: bool = False
    stateful: bool = False
    track_val_after: bool = False

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
        _check_int("meta_steps", self.meta_steps, 1)
        _check_int("meta_every", self.meta_every, 0)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.meta_every == 0 and self.warmup_steps:
            raise ValueError(
                "warmup_steps has no effect with meta_every=0 (step never meta-updates); "
                "set warmup_steps=0 and schedule meta_update yourself."
            )
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}; got {self.estimator!r}.")
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

    def replace(self, **changes: Any) -> AmalConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# The configuration is static: no leaves, compared by value, part of the tree structure.
jax.tree_util.register_pytree_node(AmalConfig, lambda c: ((), c), lambda c, _: c)


class AmalState(NamedTuple):
    """Everything an AMAL training run carries from step to step.

    Fields:
        step: ``[] int32``, training steps taken (skipped model updates included).
        meta_step: ``[] int32``, meta updates taken (skipped ones included).
        skipped_meta_updates: ``[] int32``, meta updates discarded because a training loss,
            a hypergradient, a look-ahead validation loss or the new mixer state was not
            finite.
        skipped_train_updates: ``[] int32``, model updates discarded because the mixed loss
            was not finite, or an entry of the parameters, optimizer state or model state
            that was finite became non-finite.
        params: model parameters (any pytree).
        model_state: mutable model state such as BatchNorm statistics, or ``None``.
        opt_state: the model optimizer's state.
        mix_params: the mixer's params (``[N, K]`` table, ``[K]`` global, MLP variables).
        meta_opt_state: the meta-optimizer's state.
        key: a typed PRNG key; per-step keys are ``fold_in`` of it (never consumed).
        config: the static :class:`AmalConfig` (no array leaves).
    """

    step: jax.Array
    meta_step: jax.Array
    skipped_meta_updates: jax.Array
    skipped_train_updates: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: optax.OptState
    mix_params: PyTree
    meta_opt_state: optax.OptState
    key: jax.Array
    config: AmalConfig


def init(
    config: AmalConfig,
    params: PyTree,
    *,
    key: jax.Array,
    model_state: PyTree = None,
) -> AmalState:
    """Builds the initial :class:`AmalState`.

    Args:
        config: the static configuration.
        params: initial model parameters.
        key: a PRNG key (``jax.random.key(seed)``); initialises the mixer and seeds the
            per-step keys.
        model_state: initial mutable model state (``stateful=True`` only), e.g.
            ``{"batch_stats": ...}``.

    Returns:
        The initial state. It holds copies of ``params``, ``model_state`` and ``key``, so a
        step that donates its state never invalidates the caller's arrays.

    Example:
        >>> import jax, jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(
        ...     loss_fn=lambda p, b: (b["x"][:, None] * p - b["y"]) ** 2,
        ...     val_loss_fn=lambda p, b: jnp.mean((b["x"] * p - b["y"][:, 0]) ** 2),
        ...     optimizer=optax.sgd(0.1), mixer=amal_jax.global_weights(2),
        ...     meta_optimizer=optax.sgd(1.0))
        >>> state = amal_jax.init(cfg, jnp.float32(0.0), key=jax.random.key(0))
        >>> int(state.step)
        0
    """
    if not isinstance(config, AmalConfig):
        raise ValueError(f"config must be an AmalConfig; got {type(config).__name__}.")
    key = _as_typed_key(key)
    if not config.stateful and model_state is not None:
        raise ValueError("model_state was given but config.stateful is False.")
    check_float_params(params)
    resolve_mask(config.lookahead_mask, params)
    check_optimizer(config.optimizer, "optimizer", params=params)
    params, model_state, key = _copies(params, model_state, key)
    mix_params = config.mixer.init(jax.random.fold_in(key, 2))
    check_optimizer(config.meta_optimizer, "meta_optimizer", params=mix_params)
    return AmalState(
        **_zero_counters(),
        params=params,
        model_state=model_state,
        opt_state=config.optimizer.init(params),
        mix_params=mix_params,
        meta_opt_state=config.meta_optimizer.init(mix_params),
        key=key,
        config=config,
    )


def _zero_counters() -> dict[str, jax.Array]:
    """The step counters of a fresh state."""
    names = ("step", "meta_step", "skipped_meta_updates", "skipped_train_updates")
    return {name: jnp.zeros((), jnp.int32) for name in names}


def _stays_finite(new: PyTree, old: PyTree) -> jax.Array:
    """``[] bool``: no floating-point entry that was finite in ``old`` is non-finite in ``new``.

    An entry that was already non-finite (a "best loss so far" that starts at inf) is no
    reason to refuse an update.
    """
    checks = [
        jnp.all(jnp.isfinite(n) | ~jnp.isfinite(o))
        for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
        if jnp.issubdtype(getattr(n, "dtype", np.float32), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _like(new: PyTree, old: PyTree, what: str) -> PyTree:
    """``new`` with the tree structure of ``old`` (a dict for a FrozenDict, say)."""
    new_def, old_def = jax.tree.structure(new), jax.tree.structure(old)
    if new_def == old_def:
        return new
    if new_def.num_leaves != old_def.num_leaves:
        raise ValueError(
            f"the new {what} has a different tree structure from the state's: {new_def} "
            f"against {old_def}; return the same structure each step."
        )
    return jax.tree.unflatten(old_def, jax.tree.leaves(new))


def _keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``ok``, else ``old`` (leaf by leaf; like ``optax.apply_if_finite``)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _guard_model_update(state, weights, losses, params, opt_state, model_state):
    """Discards a model update whose mixed loss is not finite or that breaks the state.

    Returns:
        ``(params, opt_state, model_state, skipped)``: the new values, or the state's own
        when the update was not finite (``skipped`` is then True).
    """
    mixed = jnp.sum(weights * losses) / losses.shape[0]
    model_state = _like(model_state, state.model_state, "model_state (from loss_fn)")
    ok = jnp.isfinite(mixed) & _stays_finite(
        (params, opt_state, model_state), (state.params, state.opt_state, state.model_state)
    )
    params = _keep_if(ok, params, state.params)
    opt_state = _keep_if(ok, opt_state, state.opt_state)
    model_state = _keep_if(ok, model_state, state.model_state)
    return params, opt_state, model_state, ~ok


def _check_columns(mixer: Mixer, losses: jax.Array) -> None:
    if losses.shape[1] != mixer.num_losses:
        raise ValueError(
            f"the mixer {mixer.name!r} was built for {mixer.num_losses} loss columns but "
            f"loss_fn returned {losses.shape[1]} (loss matrix {losses.shape})."
        )


def _mixer_metrics(mixer: Mixer, train_batch: Any) -> dict[str, jax.Array]:
    """``invalid_ids`` and ``duplicate_ids`` of the batch (zero unless the mixer counts them)."""
    metrics = {name: jnp.zeros((), jnp.int32) for name in ("invalid_ids", "duplicate_ids")}
    if mixer.batch_metrics is not None:
        metrics.update(mixer.batch_metrics(train_batch))
    return metrics


def _counter_metrics(state: AmalState) -> dict[str, jax.Array]:
    return {
        "skipped_meta_updates": state.skipped_meta_updates,
        "skipped_train_updates": state.skipped_train_updates,
    }


def _copies(params: PyTree, model_state: PyTree, key: jax.Array):
    """Copies, so that donating the state to a jitted step never deletes the caller's arrays."""
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    model_state = jax.tree.map(lambda x: jnp.array(x, copy=True), model_state)
    key = jax.random.wrap_key_data(
        jnp.array(jax.random.key_data(key), copy=True), impl=jax.random.key_impl(key)
    )
    return params, model_state, key


def _as_typed_key(key: Any) -> jax.Array:
    if key is None:
        raise ValueError("key must be a PRNG key (jax.random.key(seed)); got None.")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key must be a single PRNG key; got an array of keys of shape {key.shape} (for "
                "several runs, jax.vmap over init and step)."
            )
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(
        f"key must be a PRNG key (jax.random.key(seed)); got dtype {key.dtype}, shape {key.shape}."
    )


def _loss_closures(config: AmalConfig, state: AmalState, train_batch, val_batch, key):
    """Training losses ``params -> ([B, K], new_model_state)``; validation ``params -> ()``."""
    model_state = state.model_state
    check_batch_not_empty(train_batch, "training")
    if val_batch is not None:
        check_batch_not_empty(val_batch, "validation")

    if config.stateful:

        def train(params):
            what = "loss_fn(params, train_batch, model_state, key)"
            out = call_user(config.loss_fn, what, params, train_batch, model_state, key)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ValueError(
                    "with stateful=True, loss_fn must return (losses [B, K], new_model_state); "
                    f"got {type(out).__name__}."
                )
            return check_loss_matrix(out[0]), out[1]

        def val(params):
            what = "val_loss_fn(params, val_batch, model_state)"
            return check_val_loss(
                call_user(config.val_loss_fn, what, params, val_batch, model_state)
            )

    else:

        def train(params):
            what = "loss_fn(params, train_batch)"
            return check_loss_matrix(
                call_user(config.loss_fn, what, params, train_batch)
            ), model_state

        def val(params):
            what = "val_loss_fn(params, val_batch)"
            return check_val_loss(call_user(config.val_loss_fn, what, params, val_batch))

    if config.remat and config.estimator == "autodiff":
        train = jax.checkpoint(train)  # the jvp estimator rematerialises in linearize_losses
    return train, val


def _check_state(state: Any, what: str) -> None:
    if not isinstance(state, AmalState):
        raise ValueError(
            f"{what} takes the AmalState from amal_jax.init(config, params, key=...); got "
            f"{type(state).__name__}."
        )


def _stream_key(state: AmalState, stream: int, count: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state.key, stream), count)


def _schedule_flag(config: AmalConfig, step_count: jax.Array) -> bool | jax.Array:
    """Whether this training step does a meta update: a Python bool when known statically."""
    if config.meta_every == 0:
        return False
    if config.warmup_steps == 0 and config.meta_every == 1:
        return True
    since = step_count - config.warmup_steps
    return (since >= 0) & (since % config.meta_every == 0)


def _weight_metrics(weights: jax.Array, losses: jax.Array) -> dict[str, jax.Array]:
    return {
        "loss": jnp.sum(weights * losses) / losses.shape[0],
        "loss_per_column": jnp.mean(losses, axis=0),
        "weight_mean": jnp.mean(weights, axis=0),
        "weight_std": jnp.std(weights, axis=0),
        "weight_min": jnp.min(weights, axis=0),
        "weight_max": jnp.max(weights, axis=0),
    }


def _hypergradient_fn(config, state, train, val, mask, lin: Linearization | None):
    """``weights -> (G [B, K], L_V(theta'(weights)))`` for the configured estimator."""
    params, opt_state = state.params, state.opt_state
    if config.estimator == "jvp":

        def hyper(weights):
            return hypergradient_from_linearization(
                lin, val, params, weights, config.optimizer, opt_state, mask
            )

    else:

        def losses_only(p):
            return train(p)[0]

        def hyper(weights):
            return hypergradient_autodiff(
                losses_only, val, params, weights, config.optimizer, opt_state, mask
            )

    return hyper


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
    ok = ok & _stays_finite((mix_params, meta_opt_state), (state.mix_params, state.meta_opt_state))
    mix_params = _keep_if(ok, mix_params, state.mix_params)
    meta_opt_state = _keep_if(ok, meta_opt_state, state.meta_opt_state)
    metrics["hypergradient_finite"] = finite
    metrics["meta_update_skipped"] = ~ok
    if config.track_val_after:
        weights = mixer.apply(mix_params, train_batch, losses)
        metrics["val_loss_after"] = jnp.asarray(hyper_fn(weights)[1], jnp.float32)
    return mix_params, meta_opt_state, metrics


def _skipped_meta_metrics(config) -> dict[str, jax.Array]:
    nan = jnp.full((), jnp.nan, jnp.float32)
    metrics = {
        "val_loss_before": nan,
        "hypergradient_abs_mean": nan,
        "hypergradient_finite": jnp.asarray(True),
        "meta_update_skipped": jnp.asarray(False),
    }
    if config.track_val_after:
        metrics["val_loss_after"] = nan
    return metrics


def meta_update(state: AmalState, train_batch: Any, val_batch: Any) -> tuple[AmalState, dict]:
    """Only the meta update: ``meta_steps`` steps on the mixer params; the model is untouched.

    Use it to write schedules such as the paper's "refresh the whole table every 10 epochs":
    a loop of :func:`meta_update` over every training batch, then epochs of
    :func:`train_update`.

    Args:
        state: the current :class:`AmalState`.
        train_batch: the batch whose weights are updated (with its ids for a table mixer).
        val_batch: clean validation data for the look-ahead.

    Returns:
        ``(new_state, metrics)``: ``mix_params``, ``meta_opt_state`` and ``meta_step``
        change; ``params``, ``opt_state``, ``model_state`` and ``step`` do not. Metrics:
        ``val_loss_before`` (look-ahead validation loss with the weights before the update),
        ``hypergradient_abs_mean``, ``hypergradient_finite``, ``meta_update_skipped`` (the
        update was not finite and was discarded), the weight statistics of the updated
        weights, ``invalid_ids``, ``duplicate_ids``, the totals ``skipped_meta_updates`` /
        ``skipped_train_updates``, and ``val_loss_after`` when ``track_val_after``.

    Example:
        >>> # state, metrics = jax.jit(amal_jax.meta_update)(state, train_batch, val_batch)
    """
    _check_state(state, "meta_update")
    config = state.config
    key = _stream_key(state, _META_STREAM, state.meta_step)
    train, val = _loss_closures(config, state, train_batch, val_batch, key)
    mask = resolve_mask(config.lookahead_mask, state.params)
    if config.estimator == "jvp":
        lin = linearize_losses(train, state.params, mask=mask, has_aux=True, remat=config.remat)
        losses = lin.losses
    else:
        lin = None
        losses = train(state.params)[0]
    _check_columns(config.mixer, losses)
    hyper_fn = _hypergradient_fn(config, state, train, val, mask, lin)
    mix_params, meta_opt_state, metrics = _meta_updates(
        config, state, train_batch, losses, hyper_fn
    )
    weights = config.mixer.apply(mix_params, train_batch, jax.lax.stop_gradient(losses))
    metrics.update(_weight_metrics(weights, losses))
    metrics.update(_mixer_metrics(config.mixer, train_batch))
    new_state = state._replace(
        meta_step=state.meta_step + 1,
        skipped_meta_updates=state.skipped_meta_updates
        + metrics["meta_update_skipped"].astype(jnp.int32),
        mix_params=mix_params,
        meta_opt_state=meta_opt_state,
    )
    metrics.update(_counter_metrics(new_state))
    return new_state, metrics


def train_update(state: AmalState, train_batch: Any) -> tuple[AmalState, dict]:
    """Only the model update: one optimizer step on ``(1/B) sum w_ik l_ik``, mixer's weights.

    Args:
        state: the current :class:`AmalState`.
        train_batch: the training batch.

    Returns:
        ``(new_state, metrics)`` with the keys of :func:`step`: ``loss`` (the mixed training
        loss), ``loss_per_column``, the weight statistics ``weight_mean`` / ``weight_std`` /
        ``weight_min`` / ``weight_max`` (each ``[K]``), ``meta_updated`` (False),
        ``train_update_skipped``, ``invalid_ids``, ``duplicate_ids``, the skip totals and the
        meta metrics as NaN. A model update whose mixed loss is not finite, or that makes a
        finite entry of the state non-finite, is discarded (params, optimizer state and
        model state stay as they were) and counted.

    Example:
        >>> # state, metrics = jax.jit(amal_jax.train_update)(state, train_batch)
    """
    _check_state(state, "train_update")
    config = state.config
    key = _stream_key(state, _TRAIN_STREAM, state.step)
    train, _ = _loss_closures(config, state, train_batch, None, key)
    if config.remat and config.estimator == "jvp":
        train = jax.checkpoint(train)  # _loss_closures checkpoints only for autodiff
    losses, vjp_fn, new_model_state = jax.vjp(train, state.params, has_aux=True)
    _check_columns(config.mixer, losses)
    weights = config.mixer.apply(state.mix_params, train_batch, jax.lax.stop_gradient(losses))
    (grads,) = vjp_fn(weights.astype(losses.dtype) / losses.shape[0])
    updates, opt_state = config.optimizer.update(grads, state.opt_state, state.params)
    params, opt_state, model_state, skipped = _guard_model_update(
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
    metrics = _skipped_meta_metrics(config)
    metrics.update(_weight_metrics(weights, losses))
    metrics["meta_updated"] = jnp.asarray(False)
    metrics["train_update_skipped"] = skipped
    metrics.update(_mixer_metrics(config.mixer, train_batch))
    metrics.update(_counter_metrics(new_state))
    return new_state, metrics


def step(
    state: AmalState, train_batch: Any, val_batch: Any, meta: bool | None = None
) -> tuple[AmalState, dict]:
    """One AMAL training step: (scheduled) meta update of the mixer, then the model update.

    With ``estimator="jvp"`` the training forward pass is linearised once and shared by the
    look-ahead, the hypergradient and the real update, and with a full look-ahead the plain
    update ``theta + update(g(old weights))`` is also the first look-ahead (``"autodiff"``,
    the reference, differentiates its own look-ahead). Whether the meta update runs follows
    ``warmup_steps`` / ``meta_every``; when that is known statically (every step, never, or
    ``meta=``) no ``lax.cond`` is emitted. A step without a meta update does exactly the work
    of a plain training step (forward, backward, optimizer update); under ``jax.vmap`` a
    traced schedule's ``lax.cond`` becomes a select that runs both branches, so schedule
    vmapped runs with ``meta=``.

    Args:
        state: the current :class:`AmalState`.
        train_batch: a training batch (a pytree; with example ids for a table mixer).
        val_batch: a clean validation batch (any batch size).
        meta: ``None`` follows the config's schedule inside the computation (a ``lax.cond``
            when it depends on the step count). ``True`` / ``False`` force a meta update or
            none, statically (jit with ``static_argnames="meta"``; see :func:`is_meta_step`).
            On CPU, XLA runs weight-gradient convolutions inside ``lax.cond`` branches tens of
            times slower, so conv nets on CPU should schedule with ``meta``.

    Returns:
        ``(new_state, metrics)``. Metrics: ``loss``, ``loss_per_column``, weight statistics
        (``weight_mean`` etc., ``[K]``, of the weights used for the model update),
        ``meta_updated`` (bool: a meta update was scheduled), ``val_loss_before`` and
        ``hypergradient_abs_mean`` (NaN on steps without a meta update),
        ``hypergradient_finite`` (False when a hypergradient entry was NaN or infinite),
        ``meta_update_skipped`` / ``train_update_skipped`` (this step's meta or model update
        was not finite and was discarded), ``skipped_meta_updates`` /
        ``skipped_train_updates`` (the totals so far), ``invalid_ids`` (rows whose example id
        lies outside the table: weight 0), ``duplicate_ids`` (rows whose id already occurred
        in the batch: their hypergradients add up in one row), and ``val_loss_after`` when
        ``track_val_after``.

    Non-finite values never reach the state (like ``optax.apply_if_finite``, at both
    levels): a meta update with a non-finite training loss, hypergradient, look-ahead
    validation loss or new mixer state leaves ``mix_params`` and ``meta_opt_state`` as they
    were; a model update with a non-finite mixed loss, or one that makes a finite entry of
    the params, optimizer state or model state non-finite, leaves ``params``, ``opt_state``
    and ``model_state`` as they were. Both are counted; the step counter advances and
    training goes on with the next batch.

    Example:
        >>> import jax, jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(
        ...     loss_fn=lambda p, b: (b["x"][:, None] * p - b["y"]) ** 2,
        ...     val_loss_fn=lambda p, b: jnp.mean((b["x"] * p - b["y"][:, 0]) ** 2),
        ...     optimizer=optax.sgd(0.1), mixer=amal_jax.global_weights(2),
        ...     meta_optimizer=optax.sgd(1.0))
        >>> state = amal_jax.init(cfg, jnp.float32(0.0), key=jax.random.key(0))
        >>> batch = {"x": jnp.ones(4), "y": jnp.ones((4, 2))}
        >>> state, metrics = jax.jit(amal_jax.step)(state, batch, batch)
        >>> int(state.step), bool(metrics["meta_updated"])
        (1, True)
    """
    _check_state(state, "step")
    config = state.config
    mixer = config.mixer
    key = _stream_key(state, _TRAIN_STREAM, state.step)
    train, val = _loss_closures(config, state, train_batch, val_batch, key)
    mask = resolve_mask(config.lookahead_mask, state.params)
    if meta is None:
        do_meta = _schedule_flag(config, state.step)
    elif isinstance(meta, bool):
        do_meta = meta
    else:
        raise ValueError(f"meta must be None, True or False (static); got {meta!r}.")
    optimizer, opt_state, params = config.optimizer, state.opt_state, state.params

    # One linearisation (jvp) or one VJP (autodiff) of the training forward pass at theta.
    if config.estimator == "jvp":
        lin = linearize_losses(train, params, has_aux=True, remat=config.remat)
        losses, new_model_state, grad_of = lin.losses, lin.aux, lin.grad
    else:
        lin = None
        losses, vjp_fn, new_model_state = jax.vjp(train, params, has_aux=True)

        def grad_of(weights):
            return vjp_fn(weights.astype(losses.dtype) / losses.shape[0])[0]

    _check_columns(mixer, losses)

    sg_losses = jax.lax.stop_gradient(losses)
    old_weights = mixer.apply(state.mix_params, train_batch, sg_losses)

    # The plain update with the old weights: the whole step when there is no meta update,
    # the new parameters with reuse_lookahead, and (jvp, full look-ahead) the first look-ahead.
    share = config.estimator == "jvp" and mask is None and do_meta is not False
    if share:
        old_updates, update_vjp, old_opt_state = update_with_vjp(
            optimizer, grad_of(old_weights), opt_state, params
        )
    else:
        old_updates, old_opt_state = optimizer.update(grad_of(old_weights), opt_state, params)
    old_next = optax.apply_updates(params, old_updates)

    hyper_fn = _hypergradient_fn(config, state, train, val, mask, lin)
    first_hyper_fn = None
    if share:

        def first_hyper_fn(weights):
            del weights  # the mixer's current weights, i.e. old_weights
            return hypergradient_at_lookahead(lin, val, old_next, update_vjp)

    def with_meta(_):
        mix_params, meta_opt_state, metrics = _meta_updates(
            config, state, train_batch, losses, hyper_fn, first_hyper_fn
        )
        if config.reuse_lookahead:
            return old_next, old_opt_state, old_weights, mix_params, meta_opt_state, metrics
        weights = mixer.apply(mix_params, train_batch, sg_losses)
        updates, new_opt_state = optimizer.update(grad_of(weights), opt_state, params)
        new_params = optax.apply_updates(params, updates)
        return new_params, new_opt_state, weights, mix_params, meta_opt_state, metrics

    def without_meta(_):
        metrics = _skipped_meta_metrics(config)
        return (
            old_next,
            old_opt_state,
            old_weights,
            state.mix_params,
            state.meta_opt_state,
            metrics,
        )

    if do_meta is True:
        out = with_meta(None)
    elif do_meta is False:
        out = without_meta(None)
    else:
        out = jax.lax.cond(do_meta, with_meta, without_meta, None)
    new_params, new_opt_state, weights, mix_params, meta_opt_state, metrics = out
    new_params, new_opt_state, new_model_state, train_skipped = _guard_model_update(
        state, weights, losses, new_params, new_opt_state, new_model_state
    )

    metrics.update(_weight_metrics(weights, losses))
    metrics["meta_updated"] = jnp.asarray(do_meta)
    metrics["train_update_skipped"] = train_skipped
    metrics.update(_mixer_metrics(mixer, train_batch))
    new_state = state._replace(
        step=state.step + 1,
        meta_step=state.meta_step + jnp.asarray(do_meta, jnp.int32),
        skipped_meta_updates=state.skipped_meta_updates
        + metrics["meta_update_skipped"].astype(jnp.int32),
        skipped_train_updates=state.skipped_train_updates + train_skipped.astype(jnp.int32),
        params=new_params,
        model_state=new_model_state,
        opt_state=new_opt_state,
        mix_params=mix_params,
        meta_opt_state=meta_opt_state,
    )
    metrics.update(_counter_metrics(new_state))
    return new_state, metrics


def check_batch(
    config: AmalConfig | AmalState,
    train_batch: Any,
    val_batch: Any = None,
    *,
    labels: dict[str, int] | None = None,
) -> None:
    """Host-side checks of a batch: raises ``ValueError`` naming what is wrong.

    Inside a jitted step nothing can raise on values: there a bad id gets weight 0, a label
    outside ``[0, C)`` gets loss 0 in :func:`amal_jax.cross_entropy`, and a non-finite update
    is discarded (ids and skips are counted in the metrics). Call this on the host, on
    concrete batches, to fail early instead. It checks that no batch is empty, that every
    floating-point leaf is finite (naming the leaf and the first bad entry), the mixer's own
    requirements (the table: every id inside ``[0, N)``) and, with ``labels``, the labels.

    Args:
        config: an :class:`AmalConfig` or an :class:`AmalState`.
        train_batch: a training batch.
        val_batch: optionally, a validation batch.
        labels: optionally ``{batch key: C}``, the keys holding integer class labels and
            their number of classes. A training label must be in ``[0, C)`` or negative (the
            abstain convention); a validation label must be in ``[0, C)`` (an abstain there
            would silently count as loss 0 in the validation mean).

    Example:
        >>> import jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(lambda p, b: b["x"], lambda p, b: 0.0, optax.sgd(0.1),
        ...                           amal_jax.table(4, 1), optax.sgd(1.0))
        >>> amal_jax.check_batch(cfg, {"x": jnp.ones((2, 1)), "id": jnp.array([0, 3])})
        >>> amal_jax.check_batch(cfg, {"x": jnp.ones((2, 1)), "id": jnp.array([0, 4])})
        Traceback (most recent call last):
        ...
        ValueError: training batch: 1 example id is outside [0, 4): 4 (position 1).
    """
    if isinstance(config, AmalState):
        config = config.config
    if not isinstance(config, AmalConfig):
        raise ValueError(f"config must be an AmalConfig or AmalState; got {type(config).__name__}.")
    batches = [("training", train_batch)] + (
        [("validation", val_batch)] if val_batch is not None else []
    )
    for what, batch in batches:
        check_batch_not_empty(batch, what)
        for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
            values = np.asarray(leaf)
            if not np.issubdtype(values.dtype, np.inexact) or np.all(np.isfinite(values)):
                continue
            bad = np.argwhere(~np.isfinite(values))[0]
            raise ValueError(
                f"{what} batch: leaf {jax.tree_util.keystr(path) or '(root)'} has a non-finite "
                f"value {values[tuple(bad)]} at index {tuple(int(i) for i in bad)}."
            )
    for key, num_classes in (labels or {}).items():
        for what, batch, low in (("training", train_batch, None), ("validation", val_batch, 0)):
            if batch is None:
                continue
            if key not in batch:
                raise ValueError(f"{what} batch has no labels under {key!r}.")
            values = np.asarray(batch[key])
            bad = values >= num_classes if low is None else (values < low) | (values >= num_classes)
            if np.any(bad):
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                allowed = f"[0, {num_classes})" + (" or negative (abstain)" if low is None else "")
                raise ValueError(
                    f"{what} batch: label {batch[key][index]} at {key}{list(index)} is not "
                    f"{allowed}."
                )
    if config.mixer.check_batch is not None:
        try:
            config.mixer.check_batch(train_batch)
        except ValueError as error:
            raise ValueError(f"training batch: {error}") from None


def is_meta_step(config: AmalConfig, step_count: int) -> bool:
    """Host-side schedule: whether training step ``step_count`` does a meta update.

    For Python-level scheduling with a static ``meta`` argument to :func:`step`::

        run = jax.jit(amal_jax.step, static_argnames="meta", donate_argnums=0)
        for i, (train, val) in enumerate(batches):
            state, metrics = run(state, train, val, meta=amal_jax.is_meta_step(config, i))

    Example:
        >>> import optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(
        ...     lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1), amal_jax.global_weights(2),
        ...     optax.sgd(1.0), warmup_steps=2, meta_every=3)
        >>> [i for i in range(10) if amal_jax.is_meta_step(cfg, i)]
        [2, 5, 8]
    """
    _check_int("step_count", step_count, 0)
    return bool(_schedule_flag(config, np.int64(step_count)))


def is_refresh_epoch(epoch: int, *, warmup_epochs: int = 10, every: int = 10) -> bool:
    """The paper's schedule: a full meta refresh pass at epochs 10, 20, 30, ...

    Epochs ``0 .. warmup_epochs - 1`` train with the initial weights; from then on every
    ``every``-th epoch starts with a pass of :func:`meta_update` over the training set.

    Example:
        >>> [e for e in range(35) if is_refresh_epoch(e)]
        [10, 20, 30]
    """
    _check_int("epoch", epoch, 0)
    _check_int("warmup_epochs", warmup_epochs, 0)
    _check_int("every", every, 1)
    return epoch >= warmup_epochs and (epoch - warmup_epochs) % every == 0


def paper_preset(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    num_examples: int,
    num_losses: int,
    aux_init: float = 0.9,
    meta_learning_rate: float = 1500.0,
    meta_steps: int = 5,
    lookahead_mask: Any = None,
    ids: Any = "id",
    estimator: str = "jvp",
    stateful: bool = False,
) -> AmalConfig:
    """The authors' defaults as an :class:`AmalConfig`.

    - per-instance table ``[N, K]``: column 0 (loss to the label) starts at
      ``1 - aux_init = 0.1``, auxiliary columns at ``aux_init = 0.9``; clamped to
      ``(1e-7, 2 - 1e-7)`` after every update;
    - meta updates: ``meta_steps = 5`` plain gradient-descent steps with learning rate 1500,
      each with a fresh look-ahead;
    - the look-ahead is one step of the training optimizer in its current state, so its step
      size is the current learning rate (the authors' SGD-only look-ahead ignored momentum
      and weight decay; here they are included);
    - ``meta_every = 0``: :func:`step` does no meta updates; follow the schedule with
      :func:`is_refresh_epoch`: at epochs 10, 20, ... run :func:`meta_update` over every
      training batch, and train every epoch with :func:`train_update`.

    Pass ``lookahead_mask`` selecting the last linear layer to reproduce the authors'
    head-only look-ahead; the default moves the whole network (exact).

    Example:
        >>> import optax, jax.numpy as jnp
        >>> cfg = paper_preset(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1),
        ...                    num_examples=100, num_losses=2)
        >>> cfg.meta_steps, cfg.meta_every
        (5, 0)
    """
    return AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=table(
            num_examples, num_losses, init=paper_init_weights(num_losses, aux_init), ids=ids
        ),
        meta_optimizer=optax.sgd(meta_learning_rate),
        meta_steps=meta_steps,
        meta_every=0,
        estimator=estimator,
        lookahead_mask=lookahead_mask,
        stateful=stateful,
    )
