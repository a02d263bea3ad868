"""One interface for every method: ``init(config, ...)`` and ``step(state, ...)``.

Each method (AMAL and its presets, learning to reweight, ...) registers an :class:`Engine`
for its configuration type; the public functions below look the engine up from the config
(or the state's config), so a training loop, ``jax.jit`` / ``jax.vmap`` and the metrics are
the same whichever method runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from amal_jax._src.state import AmalState, check_state

__all__ = ["Engine", "engine_of", "init", "meta_update", "register", "step", "train_update"]

PyTree = Any


class Engine(NamedTuple):
    """What a method implements, for its configuration type.

    Fields:
        init: ``(config, params, key, model_state) -> AmalState``.
        step: ``(state, train_batch, val_batch, meta) -> (state, metrics)``; ``meta`` is
            ``None`` (follow the schedule) or a Python bool.
        meta_update: ``(state, train_batch, val_batch) -> (state, metrics)``, or ``None``
            for a method without it (:func:`meta_update` then raises a ``ValueError``).
        train_update: ``(state, train_batch) -> (state, metrics)``, or ``None``.
        schedule: ``(config, step_count) -> bool | [] bool``: whether that training step
            meta-updates (a Python bool when known statically).
    """

    init: Callable[..., AmalState]
    step: Callable[..., tuple[AmalState, dict]]
    meta_update: Callable[..., tuple[AmalState, dict]]
    train_update: Callable[..., tuple[AmalState, dict]]
    schedule: Callable[[Any, Any], Any]


_ENGINES: dict[type, Engine] = {}


def register(config_type: type, engine: Engine) -> None:
    """Makes :func:`init` / :func:`step` run ``engine`` for configs of ``config_type``."""
    _ENGINES[config_type] = engine


def engine_of(config: Any, what: str) -> Engine:
    """The :class:`Engine` of ``config``'s type; ``ValueError`` naming the known types."""
    for cls in type(config).__mro__:
        if cls in _ENGINES:
            return _ENGINES[cls]
    known = ", ".join(sorted(c.__name__ for c in _ENGINES))
    raise ValueError(
        f"{what} takes the configuration of an amal_jax method ({known}); got "
        f"{type(config).__name__}."
    )


def _part(state: AmalState, what: str) -> Callable:
    fn = getattr(engine_of(state.config, what), what)
    if fn is None:
        raise ValueError(f"{type(state.config).__name__} has no {what} (its Engine gives None).")
    return fn


def init(config: Any, params: PyTree, *, key: jax.Array, model_state: PyTree = None) -> AmalState:
    """Builds the initial :class:`AmalState`.

    Args:
        config: the static configuration of any method: an :class:`~amal_jax.AmalConfig`
            (AMAL, :func:`~amal_jax.paper_preset`, Meta-Weight-Net, fixed mixing) or a
            :class:`~amal_jax.baselines.ReweightConfig` (learning to reweight).
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
    return engine_of(config, "init").init(config, params, key, model_state)


def step(
    state: AmalState, train_batch: Any, val_batch: Any, meta: bool | None = None
) -> tuple[AmalState, dict]:
    """One training step of any method: for AMAL, the (scheduled) meta update of the mixer,
    then the model update (learning to reweight: its per-batch weights, then the update).

    With ``estimator="jvp"`` the training forward pass is linearised once and shared by the
    look-ahead, the hypergradient and the real update, and with a full look-ahead the plain
    update ``theta + update(g(old weights))`` is also the first look-ahead (``"autodiff"``,
    the reference, differentiates its own look-ahead). Whether the meta update runs follows
    ``warmup_steps`` / ``meta_every``; when that is known statically (every step, never, or
    ``meta=``) no ``lax.cond`` is emitted. A step without a meta update does exactly the work
    of a plain training step (forward, backward, optimizer update) when the schedule is
    static (under a traced schedule the shared look-ahead's derivative is set up outside the
    ``lax.cond``, so a step without a meta update costs a little more); under ``jax.vmap`` a
    traced schedule's ``lax.cond`` becomes a select that runs both branches, so schedule
    vmapped runs with ``meta=``.

    Compile it as ``jax.jit(amal_jax.step, donate_argnums=0)``: the new state then reuses
    the buffers of the state it replaces, so memory stays flat over any number of steps
    (the arrays given to :func:`init` are copied, never donated). Under ``jax.jit`` it also
    runs on a mesh: batches sharded along a data axis, the state replicated, the table
    sharded along its rows or the parameters along a model axis (README: "Many devices and
    hosts").

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
    check_state(state, "step")
    if isinstance(meta, np.bool_):
        meta = bool(meta)  # a host-side schedule's numpy bool: static all the same
    if meta is not None and not isinstance(meta, bool):
        raise ValueError(f"meta must be None, True or False (static); got {meta!r}.")
    return engine_of(state.config, "step").step(state, train_batch, val_batch, meta)


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
    check_state(state, "meta_update")
    return _part(state, "meta_update")(state, train_batch, val_batch)


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
    check_state(state, "train_update")
    return _part(state, "train_update")(state, train_batch)
