"""The training state shared by every method, its initial values and its key streams."""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amal_jax._src.checks import check_float_params, check_optimizer
from amal_jax._src.config import AmalConfig
from amal_jax._src.lookahead import resolve_mask

__all__ = ["AmalState"]

PyTree = Any

# Key streams derived from the state's key: the training forward of step s uses
# fold_in(fold_in(key, TRAIN), s); a stand-alone meta update number m uses
# fold_in(fold_in(key, META), m).
TRAIN_STREAM = 0
META_STREAM = 1


class AmalState(NamedTuple):
    """Everything a training run of any amal_jax method carries from step to step.

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
        mix_params: the mixer's params (``[N, K]`` table, ``[K]`` global, MLP variables);
            ``None`` for a method that learns no weights across steps (learning to
            reweight).
        meta_opt_state: the meta-optimizer's state (``None`` where ``mix_params`` is).
        key: a typed PRNG key; per-step keys are ``fold_in`` of it (never consumed).
        config: the method's static configuration (no array leaves): an
            :class:`~amal_jax.AmalConfig`, or another method's such as
            :class:`~amal_jax.baselines.ReweightConfig`.
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
    config: Any

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "an AmalState cannot be pickled: its config holds your loss functions (often local "
            "functions) and the mixer's and optimizers' closures, and its key is a typed PRNG "
            "key. Save its arrays with orbax-checkpoint (ocp.StandardCheckpointer().save(path, "
            "state)) and restore them into a state built by amal_jax.init (README: "
            "Checkpoints)."
        )

    def __copy__(self):
        return self._replace()

    def __deepcopy__(self, memo):
        return type(self)(*(copy.deepcopy(field, memo) for field in self))


def zero_counters() -> dict[str, jax.Array]:
    """The step counters of a fresh state."""
    names = ("step", "meta_step", "skipped_meta_updates", "skipped_train_updates")
    return {name: jnp.zeros((), jnp.int32) for name in names}


def start(config: Any, params: PyTree, key: Any, model_state: PyTree):
    """The checks every method's init makes; copies of ``params``, ``model_state``, ``key``.

    Copies, so that donating the state to a jitted step never deletes the caller's arrays.
    """
    key = as_typed_key(key)
    if not config.stateful and model_state is not None:
        raise ValueError("model_state was given but config.stateful is False.")
    check_float_params(params)
    check_optimizer(config.optimizer, "optimizer", params=params)
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    model_state = jax.tree.map(lambda x: jnp.array(x, copy=True), model_state)
    key = jax.random.wrap_key_data(
        jnp.array(jax.random.key_data(key), copy=True), impl=jax.random.key_impl(key)
    )
    return params, model_state, key


def as_typed_key(key: Any) -> jax.Array:
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


def stream_key(state: AmalState, stream: int, count: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state.key, stream), count)


def check_state(state: Any, what: str) -> None:
    if not isinstance(state, AmalState):
        raise ValueError(
            f"{what} takes the AmalState from amal_jax.init(config, params, key=...); got "
            f"{type(state).__name__}."
        )


def amal_init(config: AmalConfig, params: PyTree, key: Any, model_state: PyTree) -> AmalState:
    """AMAL's initial state (:func:`amal_jax.init` for an :class:`AmalConfig`)."""
    params, model_state, key = start(config, params, key, model_state)
    resolve_mask(config.lookahead_mask, params)
    mix_params = config.mixer.init(jax.random.fold_in(key, 2))
    check_optimizer(config.meta_optimizer, "meta_optimizer", params=mix_params)
    return AmalState(
        **zero_counters(),
        params=params,
        model_state=model_state,
        opt_state=config.optimizer.init(params),
        mix_params=mix_params,
        meta_opt_state=config.meta_optimizer.init(mix_params),
        key=key,
        config=config,
    )
