"""The AMAL step on many devices: data parallel, a sharded table, bfloat16 compute.

Three measurements, each in one run and timed in interleaved pairs as ``benchmarks.speed``
does (one repeat of ``INNER_STEPS`` consecutive steps of each side back to back, alternately
first; the median of the per-pair time ratios, with their min-max):

- ``devices``: the exact step (``jvp`` estimator, per-example table) with the global batch
  split along a ``data`` mesh axis of ``D`` devices (``D`` = 1, 2, 4, ... up to every device),
  the state replicated, against the same step on one device (the same global batch). On a GPU
  machine with several GPUs this is the real strong scaling; with simulated CPU devices
  (``--cpu-devices``) every "device" is a thread on the same cores, so the rows show the
  correctness and the overhead of the partitioned program, not a speed-up.
- ``table``: at ``N`` examples (``--table-sizes``), the table ``[N, K]`` sharded along its rows
  over every device against the same table replicated on every device (both with the batch
  split along the same axis); the per-device table memory of each. A meta update touches the
  whole table (the meta-optimizer's update and the constraint run over every row), so a
  replicated table costs ``O(N)`` per device per step and a sharded one ``O(N / D)``. On one
  device the two layouts are the same program (ratio 1 up to noise): the rows then show what
  the table's size costs.
- ``bf16``: ``benchmarks.speed``'s ``plain``, ``plain_bf16``, ``jvp`` and ``jvp_bf16`` rows
  (``AmalConfig(compute_dtype=jnp.bfloat16)``) on one device, against the float32 plain step.
  CPUs have no fast bfloat16 arithmetic: there the rows show the cost of the casts; the gain
  is for GPUs and TPUs.

Run ``python -m benchmarks.scale --help`` (from the repository root); on CPU
``python -m benchmarks.scale --cpu-devices 8`` simulates 8 devices
(``--xla_force_host_platform_device_count``). Writes ``scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import amal_jax
from benchmarks import speed

INNER_STEPS = speed.INNER_STEPS
QUICK = dict(model="mlp", batch=32, table_sizes=(1024,), bf16_batch=16, repeats=3)
DEFAULT_CPU = dict(model="mlp", batch=256, table_sizes=(2**14, 2**21), bf16_batch=256, repeats=5)
DEFAULT_GPU = dict(model="mlp", batch=1024, table_sizes=(2**14, 10**8), bf16_batch=1024, repeats=7)


def set_cpu_devices(count: int) -> None:
    """Simulated CPU devices; only before JAX has started its backends (before any array)."""
    flag = f"--xla_force_host_platform_device_count={count}"
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")


def problem(model: str, batch: int, num_examples: int, seed: int = 0):
    """``(state, train, val)``: the exact AMAL step of ``benchmarks.speed``'s setting with a
    table of ``num_examples`` rows; the batch's ids are spread over the whole table."""
    _, loss_fn, val_loss_fn, stateful = speed.loss_functions(model)
    net = speed.flax_model(model)
    spec = speed.SPECS[model]
    key = jax.random.key(seed)
    variables = net.init(key, jnp.zeros((1, *spec.input_shape)), train=False)
    model_state = {"batch_stats": variables["batch_stats"]} if stateful else None
    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=speed.optimizer(),
        mixer=amal_jax.table(num_examples, 2, init=(0.5, 0.5)),
        meta_optimizer=optax.sgd(0.1),
        normalize_hypergradient=True,
        stateful=stateful,
    )
    state = amal_jax.init(config, variables["params"], key=key, model_state=model_state)
    train, val = speed.make_data(model, batch, seed)
    # Distinct ids, one in each of `batch` equal stretches of the table (no permutation of N).
    stretch = num_examples // batch
    offsets = np.random.default_rng(seed).integers(0, stretch, batch)
    train["id"] = (np.arange(batch) * stretch + offsets).astype(np.int32)
    return state, train, val


def place(state, train, val, mesh: Mesh, table: str):
    """The state replicated (the table sharded along its rows when ``table == "sharded"``),
    the batches split along the mesh's ``data`` axis."""
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    state = jax.device_put(state, replicated)
    if table == "sharded":
        state = state._replace(mix_params=jax.device_put(state.mix_params, rows))
    return state, jax.device_put(train, rows), jax.device_put(val, rows)


def prepare(state, train, val) -> tuple[Callable[[], float], dict]:
    """Compiles the donating step for the placed arguments and warms it up: ``(repeat, info)``
    with ``repeat() -> seconds per step`` over ``INNER_STEPS`` steps."""
    t0 = time.perf_counter()
    compiled = jax.jit(amal_jax.step, donate_argnums=0).lower(state, train, val).compile()
    compile_s = time.perf_counter() - t0
    shard = state.mix_params.addressable_shards[0].data

    def repeat() -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(INNER_STEPS):
            state, _ = compiled(state, train, val)
        jax.block_until_ready(state)
        return (time.perf_counter() - t0) / INNER_STEPS

    repeat()  # warm-up
    return repeat, {"compile_s": compile_s, "table_bytes_per_device": int(shard.nbytes)}


def device_counts(limit: int) -> list[int]:
    counts, d = [], 1
    while d <= limit:
        counts.append(d)
        d *= 2
    if counts[-1] != limit:
        counts.append(limit)
    return counts


def measure_devices(model: str, batch: int, repeats: int, log, records: list) -> list[dict]:
    """The data-parallel step on D devices against the one-device step (same global batch)."""
    counts = [d for d in device_counts(jax.device_count()) if batch % d == 0]
    base, base_info = prepare(
        *place(*problem(model, batch, batch), Mesh(np.array(jax.devices()[:1]), ("data",)), "")
    )
    for d in counts:
        if d == 1:
            timing, info = speed.time_alone(base, repeats), base_info
        else:
            mesh = Mesh(np.array(jax.devices()[:d]), ("data",))
            repeat, info = prepare(*place(*problem(model, batch, batch), mesh, ""))
            timing = speed.pair_with(repeat, base, repeats)
            del repeat
        record = {"model": model, "batch": batch, "devices": d, **info, **timing}
        records.append(record)
        log(format_devices_row(record))
    return records


def measure_table(model: str, batch: int, sizes, repeats: int, log, records: list) -> list[dict]:
    """Per table size: the table sharded along its rows against replicated, on every device."""
    devices = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    for n in sizes:
        replicated, rep_info = prepare(*place(*problem(model, batch, n), mesh, "replicated"))
        sharded, sh_info = prepare(*place(*problem(model, batch, n), mesh, "sharded"))
        timing = speed.pair_with(sharded, replicated, repeats)
        del sharded, replicated
        record = {
            "model": model,
            "batch": batch,
            "devices": devices,
            "num_examples": n,
            "sharded_ms": timing["ms"],
            "replicated_ms": timing["plain_ms"],
            "ratio": timing["ratio"],
            "ratio_min": timing["ratio_min"],
            "ratio_max": timing["ratio_max"],
            "ratios": timing["ratios"],
            "pairs": timing["pairs"],
            "sharded_table_bytes_per_device": sh_info["table_bytes_per_device"],
            "replicated_table_bytes_per_device": rep_info["table_bytes_per_device"],
            "compile_s_sharded": sh_info["compile_s"],
            "compile_s_replicated": rep_info["compile_s"],
        }
        records.append(record)
        log(format_table_row(record))
    return records


def measure_bf16(model: str, batch: int, repeats: int, log, records: list) -> list[dict]:
    """``benchmarks.speed``'s float32 and bfloat16 rows on one device."""

    def each(record, _):
        records.append(record)
        log(speed.format_row(record))

    speed.run({model: (batch,)}, ["plain", "plain_bf16", "jvp", "jvp_bf16"], repeats, each)
    return records


DEVICES_HEADER = (
    "| model | global batch | devices | ms/step | x 1 device (median) | x 1 device min-max "
    "| compile s |\n|---|---:|---:|---:|---:|---:|---:|"
)
TABLE_HEADER = (
    "| model | batch | devices | N | replicated ms/step | sharded ms/step "
    "| x replicated (median) | min-max | table MB/device replicated / sharded |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def format_devices_row(r: dict) -> str:
    spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if r["pairs"] else "-"
    return (
        f"| {r['model']} | {r['batch']} | {r['devices']} | {r['ms']:.2f} | {r['ratio']:.2f} | "
        f"{spread} | {r['compile_s']:.1f} |"
    )


def format_table_row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['batch']} | {r['devices']} | {r['num_examples']:,} | "
        f"{r['replicated_ms']:.2f} | {r['sharded_ms']:.2f} | {r['ratio']:.2f} | "
        f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} | "
        f"{r['replicated_table_bytes_per_device'] / 2**20:.1f} / "
        f"{r['sharded_table_bytes_per_device'] / 2**20:.2f} |"
    )


def environment(simulated: bool) -> dict:
    env = speed.environment()
    env["devices"] = [str(d) for d in jax.devices()]
    env["simulated_cpu_devices"] = simulated
    return env


def markdown(env: dict, devices: list, table: list, bf16: list) -> str:
    out = [
        "## amal_jax scale benchmark",
        "",
        f"Device: {env['device_count']} x {env['device_kind']} ({env['platform']}), "
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, optax {env['optax']}, "
        f"Python {env['python']}, {env['cpu_count']} CPU cores.",
    ]
    if env["simulated_cpu_devices"]:
        out += [
            "",
            f"The {env['device_count']} devices are simulated CPU devices "
            "(`--xla_force_host_platform_device_count`) sharing the same "
            f"{env['cpu_count']} cores: the rows show the correctness and overhead of the "
            "partitioned programs, not a speed-up.",
        ]
    if devices:
        out += [
            "",
            "Data parallel: the exact step with the global batch split over D devices, the "
            "state replicated; x 1 device = median of the per-pair ratios (D devices / one "
            f"device, the same global batch), {devices[-1]['pairs'] or devices[0]['pairs']} "
            f"interleaved pairs of {INNER_STEPS} steps:",
            "",
            DEVICES_HEADER,
            *[format_devices_row(r) for r in devices],
        ]
    if table:
        out += [
            "",
            "The per-example table sharded along its rows against the table replicated on "
            "every device (batches split the same way); x replicated = median of the per-pair "
            "ratios sharded / replicated:",
            "",
            TABLE_HEADER,
            *[format_table_row(r) for r in table],
        ]
    if bf16:
        out += [
            "",
            "bfloat16 compute (`compute_dtype=jnp.bfloat16`; `plain_bf16`: the plain step "
            "with the same casts), one device, against the float32 plain step "
            "(`benchmarks.speed`'s columns):",
            "",
            speed.HEADER,
            *[speed.format_row(r) for r in bf16],
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="simulate this many CPU devices (sets XLA_FLAGS and JAX_PLATFORMS=cpu; only "
        "works before JAX has started, i.e. from the command line)",
    )
    parser.add_argument("--model", choices=sorted(speed.SPECS), default=None)
    parser.add_argument("--batch", type=int, default=None, help="global batch size")
    parser.add_argument(
        "--table-sizes", default=None, help="comma-separated N for the table rows, e.g. 16384,1e8"
    )
    parser.add_argument("--bf16-batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per row")
    parser.add_argument(
        "--parts",
        default="devices,table,bf16",
        help="comma-separated, from devices, table, bf16",
    )
    parser.add_argument("--out", default="results/scale", help="folder for scale.json / .md")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - {"devices", "table", "bf16"}:
        raise SystemExit(f"unknown parts {sorted(set(parts) - {'devices', 'table', 'bf16'})}")
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise SystemExit(f"--cpu-devices takes a number >= 1; got {args.cpu_devices}")
        set_cpu_devices(args.cpu_devices)
        if jax.device_count() != args.cpu_devices:
            raise SystemExit(
                f"JAX had already started with {jax.device_count()} devices; run "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={args.cpu_devices} "
                "JAX_PLATFORMS=cpu python -m benchmarks.scale instead"
            )
    gpu = jax.devices()[0].platform == "gpu"
    defaults = QUICK if args.quick else (DEFAULT_GPU if gpu else DEFAULT_CPU)
    model = args.model or defaults["model"]
    batch = args.batch or defaults["batch"]
    bf16_batch = args.bf16_batch or defaults["bf16_batch"]
    repeats = args.repeats or defaults["repeats"]
    try:
        sizes = (
            tuple(int(float(s)) for s in args.table_sizes.split(",") if s.strip())
            if args.table_sizes
            else defaults["table_sizes"]
        )
    except ValueError:
        raise SystemExit(f"--table-sizes takes numbers; got {args.table_sizes!r}") from None
    if repeats < 1 or batch < 1 or any(n < batch for n in sizes):
        raise SystemExit("--repeats and --batch must be >= 1 and every table size >= the batch")
    if batch % jax.device_count():
        raise SystemExit(f"the batch {batch} must divide over {jax.device_count()} devices")
    sizes = tuple(n - n % jax.device_count() for n in sizes)  # rows divide over the devices

    simulated = jax.devices()[0].platform == "cpu" and jax.device_count() > 1
    env = environment(simulated)
    print(
        f"devices: {env['device_count']} x {env['device_kind']} ({env['platform']}"
        f"{', simulated' if simulated else ''}); jax {env['jax']}, jaxlib {env['jaxlib']}",
        flush=True,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": env, "devices": [], "table": [], "bf16": []}

    def log(line: str) -> None:
        print(line, flush=True)
        # Written after every row, so an interrupted run keeps what it measured.
        (out / "scale.json").write_text(json.dumps(results, indent=1))
        (out / "scale.md").write_text(
            markdown(env, results["devices"], results["table"], results["bf16"])
        )

    if "devices" in parts:
        print("\n" + DEVICES_HEADER, flush=True)
        measure_devices(model, batch, repeats, log, results["devices"])
    if "table" in parts:
        print("\n" + TABLE_HEADER, flush=True)
        measure_table(model, batch, sizes, repeats, log, results["table"])
    if "bf16" in parts:
        print("\n" + speed.HEADER, flush=True)
        measure_bf16(model, bf16_batch, repeats, log, results["bf16"])
    log(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    return results


if __name__ == "__main__":
    main()
