"""The metrics every step returns, with the same keys for every method."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from amal_jax._src.mixers import Mixer
from amal_jax._src.numerics import promote

__all__ = [
    "check_columns",
    "counter_metrics",
    "mixer_metrics",
    "skipped_meta_metrics",
    "weight_metrics",
]


def check_columns(mixer: Mixer, losses: jax.Array) -> None:
    if losses.shape[1] != mixer.num_losses:
        raise ValueError(
            f"the mixer {mixer.name!r} was built for {mixer.num_losses} loss columns but "
            f"loss_fn returned {losses.shape[1]} (loss matrix {losses.shape})."
        )


def weight_metrics(weights: jax.Array, losses: jax.Array) -> dict[str, jax.Array]:
    mixed = jnp.sum(jnp.multiply(*promote(weights, losses))) / losses.shape[0]
    return {
        "loss": mixed,
        "loss_per_column": jnp.mean(losses, axis=0),
        "weight_mean": jnp.mean(weights, axis=0),
        "weight_std": jnp.std(weights, axis=0),
        "weight_min": jnp.min(weights, axis=0),
        "weight_max": jnp.max(weights, axis=0),
    }


def mixer_metrics(mixer: Mixer, train_batch: Any) -> dict[str, jax.Array]:
    """``invalid_ids`` and ``duplicate_ids`` of the batch (zero unless the mixer counts them)."""
    metrics = {name: jnp.zeros((), jnp.int32) for name in ("invalid_ids", "duplicate_ids")}
    if mixer.batch_metrics is not None:
        metrics.update(mixer.batch_metrics(train_batch))
    return metrics


def counter_metrics(state: Any) -> dict[str, jax.Array]:
    return {
        "skipped_meta_updates": state.skipped_meta_updates,
        "skipped_train_updates": state.skipped_train_updates,
    }


def skipped_meta_metrics(config) -> dict[str, jax.Array]:
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
