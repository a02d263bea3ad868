"""The 8-device checks of ``tests/test_sharding.py``, run in a subprocess of their own.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the test sets it; the rest
of the suite keeps one device). Every check steps one state on a single device and the same
state placed on a mesh of the 8 CPU devices, and compares them with the suite's float32
tolerance (``helpers.F32``); it prints one JSON object, per check the largest absolute and
relative differences of the states and metrics and whether the shardings asked for were kept,
and exits non-zero when a check fails.

Checks (each with the Dense -> BatchNorm -> Dropout -> Dense model of ``helpers.BNNet``, so
BatchNorm statistics and dropout keys are part of every state):

- ``data_parallel_<mixer>``: batches sharded along a ``data`` axis of 8 devices, the state
  replicated, for the table, network and global mixers;
- ``sharded_table``: the table ``[N, K]`` and the meta-optimizer's momentum of it sharded
  along their rows (how a table for 10^8 examples is kept), the batches sharded;
- ``fsdp``: a ``(data=4, model=2)`` mesh, batches along ``data``, every parameter (and its
  optimizer state) sharded along ``model`` on a dimension that divides, the table along
  ``data``; the shardings are kept by a sharding constraint on the new state.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import F32, TABLE_ROWS, BNNet, assert_trees_close, bn_losses, make_batch
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import amal_jax

BATCH, STEPS = 16, 3


def problem(mixer: str):
    """``(state, batches)``: a stateful BatchNorm model, ``STEPS`` (train, val) pairs."""
    model = BNNet()
    key = jax.random.key(0)
    variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, 3)), train=False)

    loss_fn, val_loss_fn = bn_losses(model)

    mixers = {
        "table": amal_jax.table(TABLE_ROWS, 2),
        "network": amal_jax.network(2, hidden=(8,)),
        "global": amal_jax.global_weights(2),
    }
    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.3, momentum=0.9),
        mixer=mixers[mixer],
        meta_optimizer=optax.sgd(0.1, momentum=0.5),  # a meta state shaped like the table
        normalize_hypergradient=True,
        stateful=True,
    )
    state = amal_jax.init(
        config,
        variables["params"],
        key=jax.random.key(5),
        model_state={"batch_stats": variables["batch_stats"]},
    )
    batches = [
        (
            make_batch(jax.random.key(10 + i), BATCH, num_examples=TABLE_ROWS),
            make_batch(jax.random.key(20 + i), BATCH, with_ids=False),
        )
        for i in range(STEPS)
    ]
    return state, batches


def run(step, state, batches):
    for train, val in batches:
        state, metrics = step(state, train, val)
    return state, metrics


def differences(a, b) -> dict[str, float]:
    """Over the floating leaves of two trees: the largest absolute difference and the
    largest share of the tolerance used, ``|a - b| / (atol + rtol |b|)`` (at most 1 passes)."""
    abs_d = used = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        d = np.abs(x - y)
        abs_d = max(abs_d, float(d.max(initial=0.0)))
        used = max(used, float((d / (F32["atol"] + F32["rtol"] * np.abs(y))).max(initial=0.0)))
    return {"max_abs": abs_d, "tolerance_used": used}


def compare(name, single, sharded, results, kept=True):
    """Checks ``sharded`` against ``single`` (both ``(state, metrics)``); records the numbers."""
    (s_state, s_metrics), (d_state, d_metrics) = single, sharded

    def arrays(state):  # every field but the (static) config, the key as its data
        return tuple(state._replace(key=jax.random.key_data(state.key)))[:-1]

    record = differences((arrays(s_state), s_metrics), (arrays(d_state), d_metrics))
    record["shardings_kept"] = bool(kept)
    try:
        assert_trees_close(arrays(d_state), arrays(s_state), F32)
        assert_trees_close(d_metrics, s_metrics, F32)
        record["ok"] = bool(kept)
    except AssertionError as error:
        record["ok"] = False
        record["error"] = str(error)[:2000]
    results[name] = record


def same_sharding(array, sharding) -> bool:
    return array.sharding.is_equivalent_to(sharding, array.ndim)


def main() -> int:
    assert jax.device_count() == 8, f"needs 8 devices, got {jax.devices()}"
    results: dict[str, dict] = {}
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    single_step = jax.jit(amal_jax.step)
    sharded_step = jax.jit(amal_jax.step, donate_argnums=0)

    def shard_batches(batches, sharding):
        return [jax.device_put(pair, sharding) for pair in batches]

    # Data parallel: batches split along "data", the state replicated.
    references = {}
    for mixer in ("table", "network", "global"):
        state, batches = problem(mixer)
        references[mixer] = single = run(single_step, state, batches)
        sharded = run(sharded_step, jax.device_put(state, replicated), shard_batches(batches, rows))
        compare(f"data_parallel_{mixer}", single, sharded, results)

    # The table and its meta-optimizer momentum sharded along their rows.
    state, batches = problem("table")
    table_rows = NamedSharding(mesh, P("data", None))

    def table_sharding(leaf):
        return table_rows if getattr(leaf, "shape", None) == (TABLE_ROWS, 2) else replicated

    placed = jax.device_put(state, replicated)
    placed = placed._replace(
        mix_params=jax.device_put(state.mix_params, table_rows),
        meta_opt_state=jax.device_put(
            state.meta_opt_state, jax.tree.map(table_sharding, state.meta_opt_state)
        ),
    )
    sharded = run(sharded_step, placed, shard_batches(batches, rows))
    new = sharded[0]
    kept = same_sharding(new.mix_params, table_rows) and all(
        same_sharding(leaf, table_sharding(leaf)) for leaf in jax.tree.leaves(new.meta_opt_state)
    )
    compare("sharded_table", references["table"], sharded, results, kept)

    # FSDP style: parameters (and their optimizer state) along "model", batches along "data".
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    rows2 = NamedSharding(mesh2, P("data"))
    replicated2 = NamedSharding(mesh2, P())

    def param_sharding(leaf):
        # The last dimension that the model axis divides, else replicated.
        for dim in reversed(range(leaf.ndim)):
            if leaf.shape[dim] % 2 == 0:
                spec = [None] * leaf.ndim
                spec[dim] = "model"
                return NamedSharding(mesh2, P(*spec))
        return replicated2

    state, batches = problem("table")
    shardings = jax.tree.map(lambda _: replicated2, state)
    shardings = shardings._replace(
        params=jax.tree.map(param_sharding, state.params),
        opt_state=jax.tree.map(param_sharding, state.opt_state),
        mix_params=NamedSharding(mesh2, P("data", None)),
        meta_opt_state=jax.tree.map(
            lambda leaf: (
                NamedSharding(mesh2, P("data", None))
                if leaf.shape == (TABLE_ROWS, 2)
                else replicated2
            ),
            state.meta_opt_state,
        ),
    )

    def fsdp_step(state, train, val):
        new, metrics = amal_jax.step(state, train, val)
        return jax.lax.with_sharding_constraint(new, shardings), metrics

    placed = jax.device_put(state, shardings)
    assert any(
        len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated
        for leaf in jax.tree.leaves(placed.params)
    )
    sharded = run(jax.jit(fsdp_step, donate_argnums=0), placed, shard_batches(batches, rows2))
    new = sharded[0]
    kept = all(
        same_sharding(leaf, sharding)
        for leaf, sharding in zip(
            jax.tree.leaves((new.params, new.opt_state, new.mix_params)),
            jax.tree.leaves(
                (shardings.params, shardings.opt_state, shardings.mix_params),
                is_leaf=lambda x: isinstance(x, NamedSharding),
            ),
            strict=True,
        )
    )
    compare("fsdp", references["table"], sharded, results, kept)

    print(json.dumps(results))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    with jax.numpy_dtype_promotion("strict"):
        sys.exit(main())
