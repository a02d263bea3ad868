"""Checkpoints: an AmalState saved with orbax and restored continues bit for bit."""

from __future__ import annotations

import contextlib
import copy
import pickle

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from helpers import (
    TABLE_ROWS,
    amal_config,
    assert_trees_equal,
    make_batch,
    mlp_params,
    standard_promotion,
)

import amal_jax


def adam_config():
    """A table mixer with Adam at both levels: every part of the state has arrays."""
    return amal_config(
        optimizer=standard_promotion(optax.adam(1e-2)),
        meta_optimizer=standard_promotion(optax.adam(0.1)),
        normalize_hypergradient=True,
    )


def fresh_state(cfg, seed):
    kp, ks = jax.random.split(jax.random.key(seed))
    return amal_jax.init(cfg, mlp_params(kp, (3, 6, 3)), key=ks)


def batches(n):
    keys = jax.random.split(jax.random.key(42), 2 * n)
    return [
        (
            make_batch(keys[2 * i], 8, num_examples=TABLE_ROWS),
            make_batch(keys[2 * i + 1], 10, with_ids=False),
        )
        for i in range(n)
    ]


def test_orbax_round_trip_continues_bit_for_bit(tmp_path):
    cfg = adam_config()
    data = batches(5)
    run = jax.jit(amal_jax.step, donate_argnums=0)

    uninterrupted = fresh_state(cfg, 0)
    for train, val in data:
        uninterrupted, _ = run(uninterrupted, train, val)

    state = fresh_state(cfg, 0)
    for train, val in data[:3]:
        state, _ = run(state, train, val)
    saved = jax.tree.map(lambda x: x.copy(), state)  # the values at the checkpoint
    checkpointer = ocp.StandardCheckpointer()
    with contextlib.closing(checkpointer):
        checkpointer.save(tmp_path / "step_3", state)  # the typed key is saved as it is
        checkpointer.wait_until_finished()
        # The target: a freshly built state (other params, other key) with the same config,
        # which travels in the tree structure, not in the checkpoint.
        target = fresh_state(cfg, 7)
        restored = checkpointer.restore(tmp_path / "step_3", target)

    assert isinstance(restored, amal_jax.AmalState) and restored.config is cfg
    assert jnp.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(saved.key)
    assert_trees_equal(restored, saved)
    assert int(restored.step) == 3 and int(restored.meta_step) == 3
    # The optimizer states are not trivial: Adam's moments have moved.
    assert np.abs(np.asarray(restored.opt_state[0].mu["head"]["w"])).max() > 0
    assert np.abs(np.asarray(restored.meta_opt_state[0].nu)).max() > 0

    for train, val in data[3:]:
        restored, _ = run(restored, train, val)
    # params, opt_state, mix_params, meta_opt_state, key data and counters: all equal.
    assert_trees_equal(restored, uninterrupted)


def test_pickle_and_flax_bytes_are_refused():
    state = fresh_state(adam_config(), 0)
    # The config holds local functions (optax's and the mixer's closures).
    with pytest.raises(TypeError, match="orbax-checkpoint"):
        pickle.dumps(state)
    # copy and deepcopy still work (they do not pickle).
    twin = copy.deepcopy(state)
    assert twin.config is state.config or twin.config == state.config
    np.testing.assert_array_equal(np.asarray(twin.step), np.asarray(state.step))
    assert copy.copy(state).params is state.params
    # msgpack cannot take the typed PRNG key.
    with pytest.raises(TypeError):
        flax.serialization.to_bytes(state)
