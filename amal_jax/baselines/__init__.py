"""Baselines on the same interface as AMAL: ``amal_jax.init(config, params, key=...)`` and
``amal_jax.step(state, train_batch, val_batch)``.

- :func:`learning_to_reweight` (Ren et al. 2018): per-batch weights from one look-ahead at
  zero weights, ``w = max(-G, 0)`` normalised; nothing is learned across steps (a
  :class:`ReweightConfig`).
- :func:`meta_weight_net` (Shu et al. 2019): a small MLP maps each example's losses to weights
  and is trained through the same look-ahead (an AMAL config with a sigmoid network mixer).
- :func:`fixed_mixing`: one global, fixed mix (the hand-tuned ``alpha``).

:func:`amal_jax.paper_preset` (the authors' AMAL) is the fourth preset, beside these.
"""

from amal_jax._src.presets import fixed_mixing, learning_to_reweight, meta_weight_net
from amal_jax._src.reweight import ReweightConfig

__all__ = ["ReweightConfig", "fixed_mixing", "learning_to_reweight", "meta_weight_net"]
