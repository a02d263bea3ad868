"""Presets side by side: the authors' AMAL, Meta-Weight-Net, a fixed mix, learning to reweight.

Each returns a method's configuration for :func:`amal_jax.init` / :func:`amal_jax.step`:
an :class:`~amal_jax.AmalConfig` for the first three (they learn or keep mixing weights with
a mixer), a :class:`~amal_jax.baselines.ReweightConfig` for learning to reweight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optax

from amal_jax._src.config import AmalConfig
from amal_jax._src.estimators import Estimator
from amal_jax._src.mixers import global_weights, network, paper_init_weights, table
from amal_jax._src.reweight import learning_to_reweight

__all__ = ["fixed_mixing", "learning_to_reweight", "meta_weight_net", "paper_preset"]


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
    estimator: str | Estimator = "jvp",
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


def meta_weight_net(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    num_losses: int = 1,
    hidden: Sequence[int] = (100,),
    meta_optimizer: optax.GradientTransformation | None = None,
    stateful: bool = False,
    **options: Any,
) -> AmalConfig:
    """Meta-Weight-Net: an MLP maps each example's losses to weights in ``(0, 1)``.

    Shu et al. (2019) feed the loss of one (noisy) target through a one-hidden-layer MLP
    (100 units) with a sigmoid output, trained through the one-step look-ahead; here that is
    an :class:`amal_jax.AmalConfig` with a sigmoid :func:`amal_jax.network` mixer starting at
    weight 0.5, with the meta-optimizer Adam(1e-3) unless given.

    Args:
        loss_fn, val_loss_fn, optimizer: as for :class:`amal_jax.AmalConfig`.
        num_losses: ``K`` (1 in the original: the loss to the noisy label).
        hidden: hidden widths of the weighting network.
        meta_optimizer: optax optimizer for the network; default ``optax.adam(1e-3)``.
        stateful: loss-function signatures.
        **options: further :class:`amal_jax.AmalConfig` fields (``estimator``, schedule...).

    Returns:
        An :class:`amal_jax.AmalConfig`; run it with :func:`amal_jax.init` / :func:`amal_jax.step`.

    Example:
        >>> import optax
        >>> cfg = meta_weight_net(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1))
        >>> cfg.mixer.name
        'network'
    """
    return AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=network(
            num_losses,
            hidden=hidden,
            init=(0.5,) * num_losses,
            activation="sigmoid",
            max_weight=1.0,
        ),
        meta_optimizer=meta_optimizer or optax.adam(1e-3),
        stateful=stateful,
        **options,
    )


def fixed_mixing(
    loss_fn: Callable[..., Any],
    val_loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    weights: Sequence[float],
    *,
    stateful: bool = False,
) -> AmalConfig:
    """A fixed global mix ``sum_k weights[k] * l_k`` (the hand-tuned ``alpha``), never meta-updated.

    Example:
        >>> import optax
        >>> cfg = fixed_mixing(lambda p, b: b, lambda p, b: 0.0, optax.sgd(0.1), (0.1, 0.9))
        >>> cfg.meta_every
        0
    """
    weights = tuple(float(w) for w in weights)
    if not weights or any(w < 0 for w in weights):
        raise ValueError(
            f"weights must be a non-empty sequence of non-negative floats; got {weights}."
        )
    high = max(max(weights), 1.0) * 2.0
    return AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=global_weights(len(weights), init=weights, clamp=(0.0, high)),
        meta_optimizer=optax.sgd(0.0),
        meta_every=0,
        stateful=stateful,
    )
