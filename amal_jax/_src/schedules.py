"""Schedules: which training steps meta-update, and the paper's refresh epochs."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from amal_jax._src.checks import check_int
from amal_jax._src.methods import engine_of
from amal_jax._src.state import AmalState

__all__ = ["is_meta_step", "is_refresh_epoch", "schedule_flag"]


def schedule_flag(config: Any, step_count: jax.Array) -> bool | jax.Array:
    """Whether this training step does a meta update: a Python bool when known statically."""
    if config.meta_every == 0:
        return False
    if config.warmup_steps == 0 and config.meta_every == 1:
        return True
    since = step_count - config.warmup_steps
    return (since >= 0) & (since % config.meta_every == 0)


def is_meta_step(config: Any, step_count: int) -> bool:
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
    check_int("step_count", step_count, 0)
    if isinstance(config, AmalState):
        config = config.config
    engine = engine_of(config, "is_meta_step")
    return bool(engine.schedule(config, np.int64(step_count)))


def is_refresh_epoch(epoch: int, *, warmup_epochs: int = 10, every: int = 10) -> bool:
    """The paper's schedule: a full meta refresh pass at epochs 10, 20, 30, ...

    Epochs ``0 .. warmup_epochs - 1`` train with the initial weights; from then on every
    ``every``-th epoch starts with a pass of :func:`meta_update` over the training set.

    Example:
        >>> [e for e in range(35) if is_refresh_epoch(e)]
        [10, 20, 30]
    """
    check_int("epoch", epoch, 0)
    check_int("warmup_epochs", warmup_epochs, 0)
    check_int("every", every, 1)
    return epoch >= warmup_epochs and (epoch - warmup_epochs) % every == 0
