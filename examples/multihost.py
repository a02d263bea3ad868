"""``amal_jax.step`` across processes (hosts): one global mesh, batches sharded along it.

Every process runs this same script with its own ``--process-id``; they meet at the
coordinator (``jax.distributed.initialize``) and then compute one step together: the devices
of all processes form one ``data`` mesh axis, each process loads only its own slice of every
training and validation batch (``jax.make_array_from_process_local_data``), the model
parameters and optimizer state are replicated, and the per-example weight table (and its
meta-optimizer state) is sharded along its rows, so each device keeps ``N / devices`` rows of
a table that may hold a weight for every one of 10^8 examples. The step is the usual
``jax.jit(amal_jax.step, donate_argnums=0)``; XLA inserts the collectives (the gradient and
hypergradient sums over the batch, the table's gather and scatter).

On one machine, two processes with two simulated CPU devices each (the CPU collectives that
JAX ships, gloo, need no setting)::

    export XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu
    python examples/multihost.py --num-processes 2 --process-id 0 --out p0.npz &
    python examples/multihost.py --num-processes 2 --process-id 1 --out p1.npz
    python examples/multihost.py --out single.npz   # one process: the same numbers

On a cluster, run it once per host with ``--coordinator HOST0:PORT`` (on GPUs and TPUs
drop ``XLA_FLAGS`` and ``JAX_PLATFORMS``). Every process writes the same ``--out``: the final
parameters, table and metrics, which equal a single process's to float32 rounding.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import amal_jax

NUM_EXAMPLES, FEATURES, CLASSES, HIDDEN = 256, 8, 3, 16
BATCH, VAL_BATCH = 32, 32  # global batch sizes: split over the processes


def init_params(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {
            "w": jax.random.normal(k1, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
            "b": jnp.zeros(HIDDEN),
        },
        "head": {
            "w": jax.random.normal(k2, (HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
            "b": jnp.zeros(CLASSES),
        },
    }


def apply(params: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["head"]["w"] + params["head"]["b"]


def loss_fn(params: dict, batch: dict) -> jax.Array:  # [B, 2]: the noisy label, a teacher
    logits = apply(params, batch["x"])
    return amal_jax.stack_losses(
        amal_jax.cross_entropy(logits, batch["y"]), amal_jax.kd_loss(logits, batch["teacher"])
    )


def val_loss_fn(params: dict, batch: dict) -> jax.Array:
    return amal_jax.cross_entropy(apply(params, batch["x"]), batch["y"]).mean()


def dataset(seed: int = 0) -> dict[str, np.ndarray]:
    """The whole (toy) data set; every process makes the same one and reads its own rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_EXAMPLES, FEATURES)).astype(np.float32)
    y = np.argmax(x[:, :CLASSES], axis=1).astype(np.int32)
    flipped = rng.random(NUM_EXAMPLES) < 0.4
    x_val = rng.normal(size=(VAL_BATCH, FEATURES)).astype(np.float32)
    return {
        "x": x,
        "y": np.where(flipped, (y + 1) % CLASSES, y).astype(np.int32),
        "teacher": (3.0 * np.eye(CLASSES, dtype=np.float32)[y]).astype(np.float32),
        "x_val": x_val,
        "y_val": np.argmax(x_val[:, :CLASSES], axis=1).astype(np.int32),
    }


def local_rows(global_size: int) -> slice:
    """This process's rows of a global batch (processes hold equal, consecutive slices)."""
    per = global_size // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(sharding: NamedSharding, local: dict, global_size: int) -> dict:
    """One global array per leaf from this process's slice of it."""
    return {
        name: jax.make_array_from_process_local_data(
            sharding, value, (global_size, *value.shape[1:])
        )
        for name, value in local.items()
    }


def place(tree: Any, shardings: Any) -> Any:
    """Host values that every process holds in full, as global arrays with ``shardings``.

    ``jax.device_put`` only places onto this process's own devices; across processes each
    one supplies the shards on its devices (``jax.make_array_from_callback``).
    """

    def one(x, sharding):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed key: place its data
            data = one(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any, mesh: Mesh) -> Any:
    """The leaves as numpy arrays, gathered from every process (replicated, then read)."""
    replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), replicated)


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="localhost:12355", help="HOST:PORT")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", help="an .npz file for the final parameters, table, metrics")
    args = parser.parse_args(argv)
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise SystemExit("--process-id must lie in [0, --num-processes)")
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    devices = jax.devices()  # every process's devices: the global mesh
    if BATCH % len(devices) or NUM_EXAMPLES % len(devices):
        raise SystemExit(f"{len(devices)} devices do not divide the batch {BATCH}")
    mesh = Mesh(np.array(devices), ("data",))
    rows = NamedSharding(mesh, P("data"))  # batches: split along the batch axis
    table_rows = NamedSharding(mesh, P("data", None))  # the [N, K] table: along its rows
    replicated = NamedSharding(mesh, P())

    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.1, momentum=0.9),
        mixer=amal_jax.table(NUM_EXAMPLES, 2),
        meta_optimizer=optax.sgd(0.1, momentum=0.5),
        normalize_hypergradient=True,
    )
    # Every process builds the same state (same seed), then places it on the global mesh.
    state = amal_jax.init(config, init_params(jax.random.key(0)), key=jax.random.key(1))

    def placement(leaf):
        return table_rows if getattr(leaf, "shape", None) == (NUM_EXAMPLES, 2) else replicated

    state = place(state, jax.tree.map(placement, state))

    data = dataset()
    val = data["x_val"][local_rows(VAL_BATCH)], data["y_val"][local_rows(VAL_BATCH)]
    val_batch = global_batch(rows, {"x": val[0], "y": val[1]}, VAL_BATCH)
    order = np.random.default_rng(1).permutation(NUM_EXAMPLES)
    step = jax.jit(amal_jax.step, donate_argnums=0)
    for i in range(args.steps):
        ids = order[(i * BATCH) % NUM_EXAMPLES :][:BATCH][local_rows(BATCH)].astype(np.int32)
        local = {"x": data["x"][ids], "y": data["y"][ids], "teacher": data["teacher"][ids]}
        train_batch = global_batch(rows, {**local, "id": ids}, BATCH)
        state, metrics = step(state, train_batch, val_batch)

    assert state.mix_params.sharding.is_equivalent_to(table_rows, 2)  # still sharded
    params, table, metrics = to_host((state.params, state.mix_params, metrics), mesh)
    result = {
        "params": np.concatenate([leaf.ravel() for leaf in jax.tree.leaves(params)]),
        "table": table,
        "loss": metrics["loss"],
        "weight_mean": metrics["weight_mean"],
        "val_loss_before": metrics["val_loss_before"],
    }
    print(
        f"process {jax.process_index()} of {jax.process_count()}, mesh of {len(devices)} "
        f"device{'s' if len(devices) > 1 else ''}: "
        f"loss {float(result['loss']):.6f}, weight_mean {np.round(result['weight_mean'], 6)}"
    )
    if args.out:
        np.savez(args.out, **result)
    return result


if __name__ == "__main__":
    main()
