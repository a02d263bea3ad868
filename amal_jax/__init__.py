"""amal_jax: learn how to mix auxiliary losses per instance, by bi-level optimisation (AMAL).

The public API; nothing outside ``__all__`` is promised. The implementation lives in
``amal_jax._src``; ``amal_jax.internal`` holds the few names baselines and benchmarks share
with it. The data tools, ``amal_jax.weak`` (rules, WRENCH, label models) and
``amal_jax.distill`` (classification data, label noise, teachers), are imported on use:
``import amal_jax.weak`` or the attribute ``amal_jax.weak`` loads them, ``import amal_jax``
does not.
"""

import importlib as _importlib

from amal_jax import baselines, clean
from amal_jax._src.batches import check_batch
from amal_jax._src.config import AmalConfig
from amal_jax._src.estimators import ESTIMATORS, JVP, Autodiff, Estimator
from amal_jax._src.hypergradient import hypergradient
from amal_jax._src.lookahead import Linearization, LookaheadMask, lookahead
from amal_jax._src.losses import cross_entropy, kd_loss, soft_cross_entropy, stack_losses
from amal_jax._src.methods import init, meta_update, step, train_update
from amal_jax._src.mixers import (
    PAPER_CLAMP,
    Mixer,
    check_ids,
    global_weights,
    network,
    paper_init_weights,
    table,
    trust_table,
)
from amal_jax._src.numerics import safe_derivatives
from amal_jax._src.presets import paper_preset
from amal_jax._src.runs import init_runs, step_runs
from amal_jax._src.schedules import is_meta_step, is_refresh_epoch
from amal_jax._src.state import AmalState

# The engines register themselves with the method registry when imported.
from amal_jax._src import reweight as _reweight, step as _step  # noqa: F401  isort: skip

__version__ = "0.1.0"

# Submodules imported on first attribute access (PEP 562), not by ``import amal_jax``.
_LAZY_SUBMODULES = ("distill", "nnx", "weak")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"amal_jax.{name}")
    raise AttributeError(f"module 'amal_jax' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY_SUBMODULES})


__all__ = [
    "ESTIMATORS",
    "JVP",
    "PAPER_CLAMP",
    "AmalConfig",
    "AmalState",
    "Autodiff",
    "Estimator",
    "Linearization",
    "LookaheadMask",
    "Mixer",
    "__version__",
    "baselines",
    "check_batch",
    "check_ids",
    "clean",
    "cross_entropy",
    "distill",
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
    "weak",
]
