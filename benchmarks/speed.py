"""Speed and memory of the AMAL step, side by side with a plain training step.

For each model and batch size this times, in one run and on one device:

- ``plain``: a fixed-mix training step (the same ``[B, 2]`` loss matrix, weights fixed);
- ``autodiff`` / ``jvp``: the exact AMAL step (meta update every step, then the real update)
  with each hypergradient estimator;
- ``autodiff_reuse`` / ``jvp_reuse``: the look-ahead parameters become the new parameters;
- ``jvp_head``: the look-ahead moves only the last layer (the authors' approximation);
- ``jvp_every10``: a meta update every 10 steps, scheduled inside the step by ``lax.cond``
  (amortised; averaged over 10 steps);
- ``jvp_every10_static``: the same schedule decided in Python (``step(..., meta=...)``, two
  compiled executables, no ``lax.cond``);
- ``jvp_remat``: the training forward pass rematerialised;
- with ``--bf16`` (or named in ``--variants``): ``plain_bf16``, the plain step with the model's
  forward and backward in bfloat16 (float32 parameters cast at apply time), and ``jvp_bf16``,
  the exact AMAL step with ``AmalConfig(compute_dtype=jnp.bfloat16)`` (float32 parameters,
  losses, hypergradient and table); both timed against the float32 plain step;
- with ``--torch``: the usual PyTorch eager recipe (``create_graph=True`` look-ahead, then the
  real update), and a plain PyTorch step, on the same device.

Then, for ``S`` runs of a small MLP (``--runs``, default 8 and 32) sharing their batches:
``amal_jax.step_runs`` (the ``S`` runs vmapped in one program) against the same ``S`` runs one
after the other with ``amal_jax.step`` (the same number of steps per run), timed in pairs,
alternately first and second, each pair giving a throughput ratio (run-steps per second
vmapped / sequential); the median ratio is reported (JSON key ``runs``).

The loss matrix is ``[B, 2]``: cross-entropy to the label and ``T^2 KL`` to fixed teacher
logits (T = 4); the validation batch has the training batch's size; the optimizer is SGD with
Nesterov momentum 0.9 and weight decay 5e-4; the mixer is a per-example table.

Timing. A repeat is 10 consecutive steps (one meta update for the amortised variants),
after a warm-up. Every variant is timed against the plain step of the same model and batch
in interleaved pairs (``--repeats`` pairs): one repeat of the variant and one of the plain
step back to back, the variant first in even pairs and second in odd ones, so that drift in
the machine's load between separately timed blocks stays out of the ratios. Each pair gives a
ratio variant time / plain time. In each record of ``speed.json``:

- ``ratio``: the median of the per-pair ratios (not the ratio of the two median times);
- ``ratio_min`` / ``ratio_max``: the smallest and largest per-pair ratio (the spread
  reported), ``ratios``: all of them in pair order, ``pairs``: their number;
- ``ms``: the median time per step of the variant's repeats; ``plain_ms``: the median time
  per step of the plain step's repeats in the same pairs;
- the plain step's own record: ``ms`` from ``--repeats`` repeats of its own, ``ratio`` exactly
  1 by definition (``ratio_min`` = ``ratio_max`` = 1, no pairs);
- the torch rows the same way against the plain PyTorch step (``torch_plain``).

The PyTorch-recipe-against-amal_jax speed-ups are ratios of the median ``ms`` of blocks timed
one after the other (not paired). Compile time is measured separately
(``jit(...).lower(...).compile()``); temporary memory and FLOPs come from the compiled
executable's memory and cost analyses (torch: peak memory during one repeat, run unpaired).

Run ``python -m benchmarks.speed --help`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import amal_jax
from amal_jax.internal import cast_floats
from benchmarks.environment import environment, environment_line
from benchmarks.models import MLP, SPECS, flax_model, torch_model

VARIANTS = (
    "plain",
    "autodiff",
    "jvp",
    "autodiff_reuse",
    "jvp_reuse",
    "jvp_head",
    "jvp_every10",
    "jvp_every10_static",
    "jvp_remat",
)
TORCH_VARIANTS = ("torch_plain", "torch_recipe")
BF16_VARIANTS = ("plain_bf16", "jvp_bf16")  # mixed precision, against the float32 plain step
INNER_STEPS = 10  # steps per timed repeat: one meta update for jvp_every10
TEMPERATURE = 4.0
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4

QUICK = {"mlp": (256,), "cnn": (64,)}
DEFAULT_CPU = {"mlp": (64, 256), "cnn": (64,), "resnet18": (16,), "resnet18_bn": (16,)}
DEFAULT_GPU = {"mlp": (256, 1024), "cnn": (256,), "resnet18": (128, 256), "resnet18_bn": (256,)}
RUNS = (8, 32)  # many-runs measurement: S runs vmapped against S runs one after the other
RUNS_MODEL = dict(features=32, hidden=(64, 64), classes=10, batch=64)
RUNS_STEPS = 10  # steps per run in one timed block


def optimizer() -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM, nesterov=True)
    )


def make_data(name: str, batch: int, seed: int) -> tuple[dict, dict]:
    spec = SPECS[name]
    rng = np.random.default_rng(seed)

    def one(n, with_ids):
        data = {
            "x": rng.normal(size=(n, *spec.input_shape)).astype(np.float32),
            "y": rng.integers(0, spec.num_classes, n).astype(np.int32),
            "teacher": (3 * rng.normal(size=(n, spec.num_classes))).astype(np.float32),
        }
        if with_ids:
            data["id"] = np.arange(n, dtype=np.int32)
        return data

    return one(batch, True), one(batch, False)


def loss_functions(name: str):
    """``(model, loss_fn, val_loss_fn, stateful)`` with the amal_jax signatures."""
    model = flax_model(name)

    def losses_from_logits(logits, batch):
        return amal_jax.stack_losses(
            amal_jax.cross_entropy(logits, batch["y"]),
            amal_jax.kd_loss(logits, batch["teacher"], TEMPERATURE),
        )

    def val_from_logits(logits, batch):
        return jnp.mean(amal_jax.cross_entropy(logits, batch["y"]))

    if SPECS[name].batch_norm:

        def loss_fn(params, batch, model_state, key):
            del key
            logits, updates = model.apply(
                {"params": params, **model_state}, batch["x"], train=True, mutable=["batch_stats"]
            )
            return losses_from_logits(logits, batch), updates

        def val_loss_fn(params, batch, model_state):
            logits = model.apply({"params": params, **model_state}, batch["x"], train=False)
            return val_from_logits(logits, batch)

        return model, loss_fn, val_loss_fn, True

    def loss_fn(params, batch):
        return losses_from_logits(model.apply({"params": params}, batch["x"]), batch)

    def val_loss_fn(params, batch):
        return val_from_logits(model.apply({"params": params}, batch["x"]), batch)

    return model, loss_fn, val_loss_fn, False


def head_mask(params):
    return {k: jax.tree.map(lambda _, k=k: k == "head", v) for k, v in params.items()}


def build(name: str, batch: int, variant: str, seed: int = 0):
    """``(step_fns, carry)`` for one variant: each ``fn(carry, train, val) -> (carry, aux)``.

    Step ``i`` of a run calls ``step_fns[0]`` if there is one function; with two (a Python-side
    schedule), ``step_fns[0]`` on meta steps (every 10th) and ``step_fns[1]`` on the others.
    """
    model, loss_fn, val_loss_fn, stateful = loss_functions(name)
    spec = SPECS[name]
    key = jax.random.key(seed)
    variables = model.init(key, jnp.zeros((1, *spec.input_shape)), train=False)
    params = variables["params"]
    model_state = {"batch_stats": variables["batch_stats"]} if stateful else None
    opt = optimizer()
    fixed = jnp.array([0.5, 0.5], jnp.float32)

    if variant in ("plain", "plain_bf16"):
        low = jnp.bfloat16 if variant == "plain_bf16" else None

        def plain_step(carry, train, val):
            del val
            params, model_state, opt_state = carry
            if low is not None:  # the forward and backward in bfloat16, as compute_dtype does
                train = cast_floats(train, low)

            def mixed(p):
                if low is not None:
                    p = cast_floats(p, low)
                if stateful:
                    losses, new_state = loss_fn(p, train, model_state, None)
                else:
                    losses, new_state = loss_fn(p, train), model_state
                if low is not None:
                    losses = losses.astype(jnp.float32)
                    new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, model_state)
                return jnp.sum(fixed * losses) / losses.shape[0], new_state

            (loss, new_state), grads = jax.value_and_grad(mixed, has_aux=True)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), new_state, opt_state), loss

        return [plain_step], (params, model_state, opt.init(params))

    options = {
        "autodiff": dict(estimator="autodiff"),
        "jvp": dict(estimator="jvp"),
        "autodiff_reuse": dict(estimator="autodiff", reuse_lookahead=True),
        "jvp_reuse": dict(estimator="jvp", reuse_lookahead=True),
        "jvp_head": dict(estimator="jvp", lookahead_mask=head_mask),
        "jvp_every10": dict(estimator="jvp", meta_every=10),
        "jvp_every10_static": dict(estimator="jvp", meta_every=10),
        "jvp_remat": dict(estimator="jvp", remat=True),
        "jvp_bf16": dict(estimator="jvp", compute_dtype=jnp.bfloat16),
    }[variant]
    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=opt,
        mixer=amal_jax.table(batch, 2, init=(0.5, 0.5)),
        meta_optimizer=optax.sgd(0.1),
        normalize_hypergradient=True,
        stateful=stateful,
        **options,
    )
    state = amal_jax.init(config, params, key=key, model_state=model_state)
    if variant == "jvp_every10_static":

        def meta_step(state, train, val):
            return amal_jax.step(state, train, val, meta=True)

        def plain_step(state, train, val):
            return amal_jax.step(state, train, val, meta=False)

        return [meta_step, plain_step], state
    return [amal_jax.step], state


def _cost(compiled) -> tuple[int | None, float | None]:
    """Temporary bytes and FLOPs of a compiled executable (None where the backend lacks them)."""
    temp = flops = None
    try:
        mem = compiled.memory_analysis()
        temp = int(mem.temp_size_in_bytes) if mem is not None else None
    except Exception:  # some backends do not implement the analysis
        temp = None
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        flops = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:
        flops = None
    return temp, flops


def prepare_jax(
    step_fns: list[Callable], carry: Any, train: dict, val: dict
) -> tuple[Callable[[], float], dict]:
    """Compiles and warms up one variant: ``(repeat, info)``.

    ``repeat()`` runs ``INNER_STEPS`` consecutive steps (carrying the state on) and returns
    seconds per step; ``info`` has ``compile_s``, ``temp_bytes`` and ``flops``.
    """
    train = jax.device_put(train)
    val = jax.device_put(val)
    compile_s, temps, flops = 0.0, [], []
    compiled = []
    for fn in step_fns:
        t0 = time.perf_counter()
        compiled.append(jax.jit(fn, donate_argnums=0).lower(carry, train, val).compile())
        compile_s += time.perf_counter() - t0
        temp, flop = _cost(compiled[-1])
        temps.append(temp)
        flops.append(flop)

    def pick(i):
        return compiled[0] if len(compiled) == 1 or i % INNER_STEPS == 0 else compiled[1]

    def repeat() -> float:
        nonlocal carry
        t0 = time.perf_counter()
        for i in range(INNER_STEPS):
            carry, _ = pick(i)(carry, train, val)
        jax.block_until_ready(carry)
        return (time.perf_counter() - t0) / INNER_STEPS

    repeat()  # warm-up
    # Two executables: the meta step's memory and FLOPs are the peak; FLOPs averaged per step.
    temp = None if None in temps else max(temps)
    flop = None
    if None not in flops:
        flop = (
            flops[0] if len(flops) == 1 else (flops[0] + (INNER_STEPS - 1) * flops[1]) / INNER_STEPS
        )
    return repeat, {"compile_s": compile_s, "temp_bytes": temp, "flops": flop}


def time_pairs(
    a: Callable[[], float], b: Callable[[], float], pairs: int
) -> tuple[list[float], list[float]]:
    """Times ``a`` and ``b`` in ``pairs`` back-to-back pairs, ``a`` first in even pairs.

    Each callable runs one repeat and returns its duration. On a shared machine the load
    drifts; within a pair both run under nearly the same load, and alternating the order
    cancels what running first or second does (a warm cache, a clock boost).

    Returns:
        ``(times_a, times_b)``: one duration each per pair, in pair order.
    """
    times_a, times_b = [], []
    for k in range(pairs):
        if k % 2 == 0:
            ta, tb = a(), b()
        else:
            tb, ta = b(), a()
        times_a.append(ta)
        times_b.append(tb)
    return times_a, times_b


def pair_with(variant: Callable[[], float], plain: Callable[[], float], pairs: int) -> dict:
    """A variant's repeats timed in interleaved pairs with the plain step's (``time_pairs``).

    Returns:
        ``ms`` / ``plain_ms``: the median time per step (milliseconds) of each side's repeats;
        ``ratio``: the median over pairs of variant time / plain time; ``ratio_min`` /
        ``ratio_max``: the smallest and largest of those ratios; ``ratios``: all of them, in
        pair order; ``pairs``.
    """
    times, plain_times = time_pairs(variant, plain, pairs)
    ratios = [t / p for t, p in zip(times, plain_times, strict=True)]
    return {
        "ms": 1e3 * statistics.median(times),
        "plain_ms": 1e3 * statistics.median(plain_times),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratios": ratios,
        "pairs": pairs,
    }


def time_alone(plain: Callable[[], float], repeats: int) -> dict:
    """The plain step's own row: median of its repeats; its ratio is 1 by definition."""
    ms = 1e3 * statistics.median([plain() for _ in range(repeats)])
    return {
        "ms": ms,
        "plain_ms": ms,
        "ratio": 1.0,
        "ratio_min": 1.0,
        "ratio_max": 1.0,
        "ratios": [],
        "pairs": 0,
    }


# -- many runs in one program --------------------------------------------------------------------


def runs_problem(seed: int = 0):
    """``(config, init_params, train, val, cache)``: the jvp step of a small MLP, a table
    mixer; ``cache`` keeps the single-run executable for every number of runs."""
    m = RUNS_MODEL
    model = MLP(hidden=m["hidden"], num_classes=m["classes"])
    rng = np.random.default_rng(seed)

    def one(n, with_ids):
        data = {
            "x": rng.normal(size=(n, m["features"])).astype(np.float32),
            "y": rng.integers(0, m["classes"], n).astype(np.int32),
            "teacher": (3 * rng.normal(size=(n, m["classes"]))).astype(np.float32),
        }
        if with_ids:
            data["id"] = np.arange(n, dtype=np.int32)
        return data

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return amal_jax.stack_losses(
            amal_jax.cross_entropy(logits, batch["y"]),
            amal_jax.kd_loss(logits, batch["teacher"], TEMPERATURE),
        )

    def val_loss_fn(params, batch):
        logits = model.apply({"params": params}, batch["x"])
        return jnp.mean(amal_jax.cross_entropy(logits, batch["y"]))

    def init_params(key):
        return model.init(key, jnp.zeros((1, m["features"])))["params"]

    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer(),
        mixer=amal_jax.table(m["batch"], 2, init=(0.5, 0.5)),
        meta_optimizer=optax.sgd(0.1),
        normalize_hypergradient=True,
    )
    train, val = jax.device_put(one(m["batch"], True)), jax.device_put(one(m["batch"], False))
    return config, init_params, train, val, {}


def time_runs(runs: int, pairs: int, problem: tuple | None = None) -> dict:
    """``runs`` runs vmapped (``step_runs``) against the same runs one after the other."""
    config, init_params, train, val, cache = problem or runs_problem()
    states = amal_jax.init_runs(config, init_params, jax.random.split(jax.random.key(0), runs))
    singles = [jax.tree.map(lambda x, i=i: x[i], states) for i in range(runs)]
    t0 = time.perf_counter()
    many = jax.jit(amal_jax.step_runs, donate_argnums=0).lower(states, train, val).compile()
    compile_many = time.perf_counter() - t0
    if "one" not in cache:
        t0 = time.perf_counter()
        one = jax.jit(amal_jax.step, donate_argnums=0).lower(singles[0], train, val).compile()
        cache["one"] = one, time.perf_counter() - t0
    one, compile_one = cache["one"]

    def vmapped():
        nonlocal states
        t0 = time.perf_counter()
        for _ in range(RUNS_STEPS):
            states, _ = many(states, train, val)
        jax.block_until_ready(states)
        return time.perf_counter() - t0

    def sequential():
        t0 = time.perf_counter()
        for i in range(runs):
            state = singles[i]
            for _ in range(RUNS_STEPS):
                state, _ = one(state, train, val)
            singles[i] = state
        jax.block_until_ready(singles)
        return time.perf_counter() - t0

    vmapped(), sequential()  # warm-up
    times_v, times_s = time_pairs(vmapped, sequential, pairs)
    # The same run-steps in both: throughput vmapped / sequential.
    ratios = [ts / tv for tv, ts in zip(times_v, times_s, strict=True)]
    run_steps = runs * RUNS_STEPS
    return {
        "runs": runs,
        "steps_per_run": RUNS_STEPS,
        "pairs": pairs,
        "model": "mlp {features}-{h}-{classes}".format(
            h="-".join(map(str, RUNS_MODEL["hidden"])), **RUNS_MODEL
        ),
        "batch": RUNS_MODEL["batch"],
        "vmapped_run_steps_per_s": run_steps / statistics.median(times_v),
        "sequential_run_steps_per_s": run_steps / statistics.median(times_s),
        "throughput_ratio": statistics.median(ratios),
        "throughput_ratios": ratios,
        "compile_s_vmapped": compile_many,
        "compile_s_single": compile_one,
    }


RUNS_HEADER = (
    "| runs | model | batch | steps/run | vmapped run-steps/s | sequential run-steps/s "
    "| ratio (median) | ratio min-max | compile s vmapped / single |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
)


def format_runs_row(r: dict) -> str:
    return (
        f"| {r['runs']} | {r['model']} | {r['batch']} | {r['steps_per_run']} | "
        f"{r['vmapped_run_steps_per_s']:.0f} | {r['sequential_run_steps_per_s']:.0f} | "
        f"{r['throughput_ratio']:.2f} | {min(r['throughput_ratios']):.2f}-"
        f"{max(r['throughput_ratios']):.2f} | {r['compile_s_vmapped']:.1f} / "
        f"{r['compile_s_single']:.1f} |"
    )


# -- PyTorch eager side by side -------------------------------------------------------------------


def prepare_torch(name: str, batch: int, variant: str) -> tuple[Callable[[], float], dict]:
    """A plain PyTorch step, or the create_graph=True AMAL recipe, on the same device.

    Returns ``(repeat, info)`` as ``prepare_jax`` does; ``temp_bytes`` is the peak memory
    (CUDA only) above what was held before, during one repeat run alone after the warm-up.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torch_model(name).to(device).train()
    train, val = make_data(name, batch, 0)

    def tensor(a):
        t = torch.from_numpy(a).to(device)
        return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t

    x, y, teacher = tensor(train["x"]), tensor(train["y"]).long(), tensor(train["teacher"])
    xv, yv = tensor(val["x"]), tensor(val["y"]).long()
    table = torch.full((batch, 2), 0.5, device=device)
    opt = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    names = [n for n, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss_matrix(logits):
        ce = F.cross_entropy(logits, y, reduction="none")
        log_t = F.log_softmax(teacher / TEMPERATURE, dim=1)
        log_s = F.log_softmax(logits / TEMPERATURE, dim=1)
        kd = TEMPERATURE**2 * (log_t.exp() * (log_t - log_s)).sum(dim=1)
        return torch.stack([ce, kd], dim=1)

    def real_update(weights):
        opt.zero_grad(set_to_none=True)
        losses = loss_matrix(model(x))
        ((weights * losses).sum() / batch).backward()
        opt.step()

    def recipe_step():
        weights = table.clone().requires_grad_(True)
        params = dict(model.named_parameters())
        losses = loss_matrix(functional_call(model, (params, buffers), (x,)))
        grads = torch.autograd.grad(
            (weights * losses).sum() / batch, list(params.values()), create_graph=True
        )
        # The same look-ahead as optax: weight decay, Nesterov momentum, current lr.
        new = {}
        for n, g in zip(names, grads, strict=True):
            p = params[n]
            g = g + WEIGHT_DECAY * p
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            trace = g if buf is None else MOMENTUM * buf + g
            new[n] = p - LR * (g + MOMENTUM * trace)
        model.eval()
        val_loss = F.cross_entropy(functional_call(model, (new, buffers), (xv,)), yv)
        model.train()
        (hyper,) = torch.autograd.grad(val_loss, weights)
        with torch.no_grad():
            scaled = hyper / hyper.abs().mean().clamp_min(1e-30)
            table.copy_((table - 0.1 * scaled).clamp(1e-7, 2 - 1e-7))
        real_update(table)

    def plain_step():
        real_update(torch.tensor([0.5, 0.5], device=device))

    fn = recipe_step if variant == "torch_recipe" else plain_step

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def repeat() -> float:
        t0 = time.perf_counter()
        for _ in range(INNER_STEPS):
            fn()
        sync()
        return (time.perf_counter() - t0) / INNER_STEPS

    for _ in range(3):
        fn()
    sync()
    temp = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        repeat()
        temp = torch.cuda.max_memory_allocated() - base
    else:
        repeat()
    return repeat, {"compile_s": None, "temp_bytes": temp, "flops": None}


# -- driver ---------------------------------------------------------------------------------------


def prepare(
    name: str, batch: int, variant: str, train: dict, val: dict
) -> tuple[Callable[[], float], dict]:
    """``(repeat, info)`` for any variant (``prepare_jax`` / ``prepare_torch``)."""
    if variant.startswith("torch_"):
        return prepare_torch(name, batch, variant)
    step_fns, carry = build(name, batch, variant)
    return prepare_jax(step_fns, carry, train, val)


def _ratio(value, ref):
    return value / ref if value and ref else None


def run(models: dict[str, tuple[int, ...]], variants: list[str], repeats: int, log) -> list[dict]:
    """Times every variant of every model and batch in ``repeats`` interleaved pairs with the
    plain step (torch variants: the plain PyTorch step); ``log(record, records)`` after each."""
    records = []
    for name, batches in models.items():
        for batch in batches:
            train, val = make_data(name, batch, 0)
            references = {}  # "plain" / "torch_plain": (repeat, info), kept for all pairs
            for variant in variants:
                ref = "torch_plain" if variant.startswith("torch_") else "plain"
                if ref not in references:
                    references[ref] = prepare(name, batch, ref, train, val)
                plain, ref_info = references[ref]
                if variant == ref:
                    info, timing = ref_info, time_alone(plain, repeats)
                else:
                    repeat, info = prepare(name, batch, variant, train, val)
                    timing = pair_with(repeat, plain, repeats)
                    del repeat  # frees the variant's executables and state
                record = {"model": name, "batch": batch, "variant": variant, **info, **timing}
                record["temp_ratio"] = _ratio(info["temp_bytes"], ref_info["temp_bytes"])
                record["flops_ratio"] = _ratio(info["flops"], ref_info["flops"])
                records.append(record)
                log(record, records)
    return records


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


HEADER = (
    "| model | batch | variant | ms/step | x plain (median) | x plain min-max | compile s "
    "| temp MB | x plain temp | x plain FLOPs |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
)


def format_row(r: dict) -> str:
    temp_mb = None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20
    spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if r["pairs"] else "-"
    return (
        f"| {r['model']} | {r['batch']} | {r['variant']} | {r['ms']:.2f} | "
        f"{_fmt(r['ratio'], '.2f')} | {spread} | {_fmt(r['compile_s'], '.1f')} | "
        f"{_fmt(temp_mb, '.1f')} | {_fmt(r['temp_ratio'], '.2f')} | "
        f"{_fmt(r['flops_ratio'], '.2f')} |"
    )


def torch_vs_jax(records: list[dict]) -> list[str]:
    """Per model and batch: how much faster each amal_jax AMAL step is than the torch recipe."""
    lines = []
    keyed = {(r["model"], r["batch"], r["variant"]): r for r in records}
    for (model, batch, variant), r in keyed.items():
        if variant != "torch_recipe":
            continue
        for ours in ("autodiff", "jvp", "jvp_reuse"):
            if (model, batch, ours) in keyed:
                speedup = r["ms"] / keyed[(model, batch, ours)]["ms"]
                lines.append(f"| {model} | {batch} | {ours} | {speedup:.2f}x |")
    return lines


def markdown(records: list[dict], env: dict, runs: list[dict] | None = None) -> str:
    pairs = max((r["pairs"] for r in records), default=0)
    out = [
        "## amal_jax speed benchmark",
        "",
        environment_line(env),
        "",
        f"x plain: each variant timed against the plain step of the same model and batch "
        f"(torch rows: the plain PyTorch step) in {pairs} interleaved pairs, one repeat "
        f"({INNER_STEPS} consecutive steps) of each back to back, alternately first; the median "
        f"of the per-pair ratios (variant time / plain time), and their min-max. ms/step: the "
        f"median of the variant's repeats (the plain rows: {pairs} repeats of their own). Temp "
        f"and FLOPs ratios come from the compiled executables.",
        "",
        HEADER,
        *[format_row(r) for r in records],
    ]
    torch_lines = torch_vs_jax(records)
    if torch_lines:
        out += [
            "",
            "PyTorch eager recipe time / amal_jax step time (higher = amal_jax faster; "
            "ratios of the ms/step medians above, not paired):",
            "",
            "| model | batch | amal_jax variant | speed-up |",
            "|---|---:|---|---:|",
            *torch_lines,
        ]
    if runs:
        out += [
            "",
            f"Many runs in one program: S runs sharing their batches, amal_jax.step_runs (vmapped) "
            f"against the same runs one after the other (amal_jax.step); ratio = run-steps per "
            f"second vmapped / sequential, median of {runs[0]['pairs']} interleaved pairs:",
            "",
            RUNS_HEADER,
            *[format_runs_row(r) for r in runs],
        ]
    return "\n".join(out) + "\n"


def parse_models(text: str | None, quick: bool) -> dict[str, tuple[int, ...]]:
    gpu = jax.devices()[0].platform == "gpu"
    defaults = QUICK if quick else (DEFAULT_GPU if gpu else DEFAULT_CPU)
    if not text:
        return dict(defaults)
    models = {}
    for item in text.split(","):
        name, _, sizes = item.partition(":")
        if name not in SPECS:
            raise SystemExit(f"unknown model {name!r}; choose from {sorted(SPECS)}")
        batches = (
            tuple(int(s) for s in sizes.split("/"))
            if sizes
            else (defaults.get(name) or DEFAULT_CPU[name])
        )
        models[name] = batches
    return models


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MLP b256 and CNN b64 only")
    parser.add_argument(
        "--models",
        help="comma-separated MODEL[:B1/B2...], e.g. mlp:256/1024,resnet18:128 "
        f"(models: {', '.join(sorted(SPECS))})",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, in order, from {VARIANTS + BF16_VARIANTS + TORCH_VARIANTS}",
    )
    parser.add_argument("--torch", action="store_true", help="add the PyTorch eager recipe")
    parser.add_argument(
        "--bf16", action="store_true", help=f"add the bfloat16 variants {', '.join(BF16_VARIANTS)}"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed pairs of repeats of each variant and the plain step (median of the ratios); "
        "default 5 with --quick, else 7",
    )
    parser.add_argument(
        "--runs",
        default=",".join(map(str, RUNS)),
        help="comma-separated numbers of runs for the vmapped-against-sequential measurement "
        "(timed pairs: --repeats); empty to skip",
    )
    parser.add_argument("--out", default="results/speed", help="folder for speed.json / .md")
    args = parser.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    known = VARIANTS + BF16_VARIANTS + TORCH_VARIANTS
    unknown = set(variants) - set(known)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {known}")
    if "plain" not in variants:
        variants.insert(0, "plain")
    if args.bf16:
        variants += [v for v in BF16_VARIANTS if v not in variants]
    if args.torch:
        variants += [v for v in TORCH_VARIANTS if v not in variants]
    if any(v.startswith("torch_") for v in variants):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit("the torch variants need PyTorch installed") from None
        if "torch_recipe" in variants and "torch_plain" not in variants:
            variants.insert(variants.index("torch_recipe"), "torch_plain")
    repeats = args.repeats or (5 if args.quick else 7)
    if repeats < 1:
        raise SystemExit(f"--repeats takes a number of pairs >= 1; got {args.repeats}")
    try:
        runs_sizes = [int(r) for r in args.runs.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"--runs takes comma-separated integers; got {args.runs!r}") from None
    if any(size < 1 for size in runs_sizes):
        raise SystemExit(f"--runs takes numbers of runs >= 1; got {args.runs!r}")
    env = environment()
    print(
        f"device: {env['device_kind']} ({env['platform']}); jax {env['jax']}, "
        f"jaxlib {env['jaxlib']}; torch {env.get('torch')}",
        flush=True,
    )
    print(HEADER, flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs_records: list[dict] = []

    def write(records):
        # Results are written after every measurement, so an interrupted run keeps them.
        payload = {"environment": env, "records": records, "runs": runs_records}
        (out / "speed.json").write_text(json.dumps(payload, indent=1))
        (out / "speed.md").write_text(markdown(records, env, runs_records))

    def log(record, records):
        print(format_row(record), flush=True)
        write(records)

    records = run(parse_models(args.models, args.quick), variants, repeats, log)
    if runs_sizes:
        print("\n" + RUNS_HEADER, flush=True)
    problem = runs_problem() if runs_sizes else None
    for size in runs_sizes:
        runs_records.append(time_runs(size, repeats, problem))
        print(format_runs_row(runs_records[-1]), flush=True)
        write(records)
    torch_lines = torch_vs_jax(records)
    if torch_lines:
        print("\nPyTorch eager recipe time / amal_jax step time:")
        print("\n".join(torch_lines))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")
    return records


if __name__ == "__main__":
    main()
