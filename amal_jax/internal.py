"""The few semi-private names that tests and third-party methods share with the core.

Not part of the public API (no promise across versions), but a sanctioned place to import
them from instead of underscore names: the method registry (to plug in a new method on the
``init`` / ``step`` interface), the look-ahead's building blocks, the update guard and the
mixed-precision cast.
"""

from amal_jax._src.closures import loss_closures
from amal_jax._src.guards import guard_model_update, stays_finite
from amal_jax._src.lookahead import (
    Linearization,
    hypergradient_at_lookahead,
    hypergradient_autodiff,
    hypergradient_from_linearization,
    linearize_losses,
    resolve_mask,
    update_with_vjp,
)
from amal_jax._src.methods import Engine, engine_of, register
from amal_jax._src.metrics import counter_metrics, weight_metrics
from amal_jax._src.precision import cast_floats
from amal_jax._src.state import TRAIN_STREAM, start, stream_key, zero_counters

__all__ = [
    "TRAIN_STREAM",
    "Engine",
    "Linearization",
    "cast_floats",
    "counter_metrics",
    "engine_of",
    "guard_model_update",
    "hypergradient_at_lookahead",
    "hypergradient_autodiff",
    "hypergradient_from_linearization",
    "linearize_losses",
    "loss_closures",
    "register",
    "resolve_mask",
    "start",
    "stays_finite",
    "stream_key",
    "update_with_vjp",
    "weight_metrics",
    "zero_counters",
]
