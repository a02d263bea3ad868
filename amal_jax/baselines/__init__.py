"""Baselines on the same step interface as AMAL: ``init(...) -> state``, ``step(state, train,
val) -> (state, metrics)``.

- :func:`learning_to_reweight` (Ren et al. 2018): per-batch weights from one look-ahead at
  zero weights, ``w = max(-G, 0)`` normalised; nothing is learned across steps.
- :func:`meta_weight_net` (Shu et al. 2019): a small MLP maps each example's losses to weights
  and is trained through the same look-ahead (an AMAL config with a sigmoid network mixer).
- :func:`fixed_mixing`: one global, fixed mix (the hand-tuned ``alpha``).
"""

from amal_jax.baselines.reweight import (
    ReweightConfig,
    fixed_mixing,
    learning_to_reweight,
    meta_weight_net,
    reweight_init,
    reweight_step,
)

__all__ = [
    "ReweightConfig",
    "fixed_mixing",
    "learning_to_reweight",
    "meta_weight_net",
    "reweight_init",
    "reweight_step",
]
