"""amal_jax: learn how to mix auxiliary losses per instance, by bi-level optimisation (AMAL).

The public API; nothing outside ``__all__`` is promised.
"""

from amal_jax import baselines, clean, data
from amal_jax._src.runs import init_runs, step_runs
from amal_jax.hypergradient import ESTIMATORS, LookaheadMask, hypergradient, lookahead
from amal_jax.losses import cross_entropy, kd_loss, soft_cross_entropy, stack_losses
from amal_jax.mixing import (
    PAPER_CLAMP,
    Mixer,
    check_ids,
    global_weights,
    network,
    paper_init_weights,
    table,
    trust_table,
)
from amal_jax.numerics import safe_derivatives
from amal_jax.step import (
    AmalConfig,
    AmalState,
    check_batch,
    init,
    is_meta_step,
    is_refresh_epoch,
    meta_update,
    paper_preset,
    step,
    train_update,
)

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "PAPER_CLAMP",
    "AmalConfig",
    "AmalState",
    "LookaheadMask",
    "Mixer",
    "__version__",
    "baselines",
    "clean",
    "data",
    "check_batch",
    "check_ids",
    "cross_entropy",
    "global_weights",
    "hypergradient",
    "init",
    "init_runs",
    "is_meta_step",
    "is_refresh_epoch",
    "kd_loss",
    "lookahead",
    "meta_update",
    "network",
    "paper_init_weights",
    "paper_preset",
    "safe_derivatives",
    "soft_cross_entropy",
    "stack_losses",
    "step",
    "step_runs",
    "table",
    "train_update",
    "trust_table",
]
