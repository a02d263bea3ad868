"""Flax NNX through amal_jax.step: BatchNorm statistics, Dropout keys, a hand-written loop."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import F32, assert_trees_close, assert_trees_equal, load_example

import amal_jax
import amal_jax.nnx as amal_nnx

ROOT = Path(__file__).resolve().parent.parent
MOMENTUM = 0.5
EPS = 1e-5  # nnx.BatchNorm's default epsilon


class Net(nnx.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: 3 features, 2 classes."""

    def __init__(self, rngs: nnx.Rngs, dropout: float = 0.5, hidden: int = 4):
        self.l1 = nnx.Linear(3, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, momentum=MOMENTUM, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def losses(model, batch):
    logits = model(batch["x"])
    return amal_jax.stack_losses(
        amal_jax.cross_entropy(logits, batch["y"]),
        amal_jax.cross_entropy(logits, batch["y2"]),
    )


def val_loss(model, batch):
    return jnp.mean(amal_jax.cross_entropy(model(batch["x"]), batch["y"]))


def batch(seed, n=8):
    kx, ky, kz = jax.random.split(jax.random.key(seed), 3)
    return {
        "x": jax.random.normal(kx, (n, 3)),
        "y": jax.random.randint(ky, (n,), 0, 2),
        "y2": jax.random.randint(kz, (n,), 0, 2),
    }


def setup(dropout=0.5, **config_kw):
    """``(graphdef, state)`` for a fresh Net and an AMAL config around it."""
    graphdef, params, model_state = amal_nnx.split_model(Net(nnx.Rngs(0), dropout))
    loss_fn, val_loss_fn = amal_nnx.loss_functions(graphdef, losses, val_loss)
    kw = dict(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.3, momentum=0.9),
        mixer=amal_jax.global_weights(2),
        meta_optimizer=optax.sgd(1.0),
        stateful=True,
    )
    kw.update(config_kw)
    config = amal_jax.AmalConfig(**kw)
    state = amal_jax.init(config, params, key=jax.random.key(1), model_state=model_state)
    return graphdef, state


def hand_eval_forward(params, stats, x):
    """The eval-mode forward pass in numpy: running statistics, no dropout."""
    h = x @ params["l1"]["kernel"] + params["l1"]["bias"]
    h = (h - stats["bn"]["mean"]) / np.sqrt(stats["bn"]["var"] + EPS)
    h = np.maximum(h * params["bn"]["scale"] + params["bn"]["bias"], 0.0)
    return h @ params["l2"]["kernel"] + params["l2"]["bias"]


def _np(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def pure(state):
    """A nested dict of numpy arrays (keys as their data)."""
    return jax.tree.map(_np, nnx.to_pure_dict(state))


# --- (a) BatchNorm statistics: one training pass at the pre-step parameters ----------------


@pytest.mark.parametrize(
    "config_kw",
    [{}, {"estimator": "autodiff", "meta_steps": 2}, {"reuse_lookahead": True}],
    ids=["jvp", "autodiff-2-meta-steps", "reuse-lookahead"],
)
def test_batch_stats_come_from_one_training_pass_at_the_pre_step_params(config_kw):
    _, state = setup(**config_kw)
    train, val = batch(0), batch(1, n=6)
    params, stats = pure(state.params), pure(state.model_state)
    new_state, metrics = jax.jit(amal_jax.step)(state, train, val)
    assert bool(metrics["meta_updated"]) and float(metrics["hypergradient_abs_mean"]) > 0

    # By hand: the pre-BatchNorm activations of the training batch at the old parameters.
    h = np.asarray(train["x"]) @ params["l1"]["kernel"] + params["l1"]["bias"]
    expected_mean = MOMENTUM * stats["bn"]["mean"] + (1 - MOMENTUM) * h.mean(axis=0)
    expected_var = MOMENTUM * stats["bn"]["var"] + (1 - MOMENTUM) * h.var(axis=0)
    new_stats = pure(new_state.model_state)
    np.testing.assert_allclose(new_stats["bn"]["mean"], expected_mean, **F32)
    np.testing.assert_allclose(new_stats["bn"]["var"], expected_var, **F32)
    assert not np.allclose(new_stats["bn"]["mean"], stats["bn"]["mean"])
    # The parameters did move, and the random state did not.
    assert not np.allclose(pure(new_state.params)["l1"]["kernel"], params["l1"]["kernel"])
    assert_trees_equal(new_stats["drop"], stats["drop"])


def test_loss_fn_is_pure_and_returns_the_new_state():
    _, state = setup()
    before = pure(state.model_state)
    values, new_state = state.config.loss_fn(
        state.params, batch(0), state.model_state, jax.random.key(3)
    )
    assert values.shape == (8, 2)
    assert_trees_equal(pure(state.model_state), before)  # the input state is untouched
    assert jax.tree.structure(new_state) == jax.tree.structure(state.model_state)
    assert not np.allclose(pure(new_state)["bn"]["mean"], before["bn"]["mean"])


# --- (b) Dropout keys -------------------------------------------------------------------------


def test_same_key_same_masks_other_key_other_masks():
    _, state = setup()
    loss_fn = state.config.loss_fn
    args = (state.params, batch(0), state.model_state)
    a, _ = loss_fn(*args, jax.random.key(7))
    b, _ = loss_fn(*args, jax.random.key(7))
    c, _ = loss_fn(*args, jax.random.key(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Without dropout the key does not matter.
    _, plain = setup(dropout=0.0)
    args = (plain.params, batch(0), plain.model_state)
    np.testing.assert_array_equal(
        plain.config.loss_fn(*args, jax.random.key(7))[0],
        plain.config.loss_fn(*args, jax.random.key(8))[0],
    )


def test_steps_are_deterministic_and_the_step_count_changes_the_masks():
    _, state = setup()
    step = jax.jit(amal_jax.step)
    train, val = batch(0), batch(1)
    first, _ = step(state, train, val)
    again, _ = step(state, train, val)
    assert_trees_equal(first.params, again.params)
    assert_trees_equal(first.model_state, again.model_state)
    assert_trees_equal(first.mix_params, again.mix_params)
    # The same state at another step count draws other dropout masks ...
    later, _ = step(state._replace(step=jnp.int32(1)), train, val)
    assert not np.allclose(pure(later.params)["l2"]["kernel"], pure(first.params)["l2"]["kernel"])
    # ... which is all that differs: without dropout the step count changes nothing.
    _, plain = setup(dropout=0.0)
    a, _ = step(plain, train, val)
    b, _ = step(plain._replace(step=jnp.int32(1)), train, val)
    assert_trees_close(a.params, b.params, F32)


def test_validation_loss_uses_running_statistics_and_no_dropout():
    _, state = setup()
    new_state, _ = jax.jit(amal_jax.step)(state, batch(0), batch(1))  # stats no longer 0 / 1
    val = batch(2, n=5)
    value = new_state.config.val_loss_fn(new_state.params, val, new_state.model_state)
    logits = hand_eval_forward(pure(new_state.params), pure(new_state.model_state), val["x"])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(5), np.asarray(val["y"])])
    np.testing.assert_allclose(value, expected, **F32)
    # Another random state in model_state changes nothing: no dropout draws.
    reseeded = jax.tree.map(
        lambda v: jax.random.key(123) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v,
        new_state.model_state,
    )
    assert float(new_state.config.val_loss_fn(new_state.params, val, reseeded)) == float(value)


# --- (c) equality with a hand-written nnx / optax loop --------------------------------------


def test_fixed_mix_equals_a_hand_written_nnx_loop():
    weights = (0.7, 0.3)
    optimizer = optax.sgd(0.2, momentum=0.9)
    graphdef, state = setup(
        optimizer=optimizer, mixer=amal_jax.global_weights(2, init=weights), meta_every=0
    )
    keys = []
    loss_fn = state.config.loss_fn

    def recording_loss_fn(params, batch, model_state, key):
        keys.append(key)  # concrete: the steps below run without jit
        return loss_fn(params, batch, model_state, key)

    state = state._replace(config=state.config.replace(loss_fn=recording_loss_fn))
    batches = [batch(10 + i) for i in range(3)]
    step_keys = []
    for train in batches:
        keys.clear()
        state, _ = amal_jax.step(state, train, None)
        assert len({str(jax.random.key_data(k)) for k in keys}) == 1  # one key per step
        step_keys.append(keys[0])

    # The hand-written loop: the same module, optimizer, batches and dropout keys.
    model = Net(nnx.Rngs(0))
    opt_state = optimizer.init(nnx.state(model, nnx.Param))
    mix = jnp.asarray(weights)
    for train, key in zip(batches, step_keys, strict=True):
        model.train()
        streams = [s for _, s in nnx.iter_graph(model) if isinstance(s, nnx.RngStream)]
        for i, stream in enumerate(streams):  # amal_jax.nnx's documented seeding
            stream.key.set_value(jax.random.fold_in(key, i))
            stream.count.set_value(jnp.zeros((), jnp.uint32))

        def mixed_loss(model, train=train):
            return jnp.mean(losses(model, train) @ mix)

        grads = nnx.grad(mixed_loss)(model)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))

    assert_trees_close(pure(state.params), pure(nnx.state(model, nnx.Param)), F32)
    assert_trees_close(
        pure(state.model_state)["bn"], pure(nnx.state(model, nnx.BatchStat))["bn"], F32
    )
    trained = amal_nnx.merge(graphdef, state)
    x = batches[0]["x"]
    model.eval()
    np.testing.assert_allclose(trained(x), model(x), **F32)


# --- (d) jit: a meta step does not retrace on new data ---------------------------------------


def test_meta_step_compiles_once():
    traces = []

    def counting_losses(model, batch):
        traces.append(1)
        return losses(model, batch)

    graphdef, params, model_state = amal_nnx.split_model(Net(nnx.Rngs(0)))
    loss_fn, val_loss_fn = amal_nnx.loss_functions(graphdef, counting_losses, val_loss)
    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.1),
        mixer=amal_jax.table(64, 2),
        meta_optimizer=optax.sgd(1.0),
        stateful=True,
    )
    state = amal_jax.init(config, params, key=jax.random.key(0), model_state=model_state)
    step = jax.jit(amal_jax.step, donate_argnums=0)
    ids = jnp.arange(8, dtype=jnp.int32)
    state, metrics = step(state, {**batch(0), "id": ids}, batch(1))
    assert bool(metrics["meta_updated"])
    traced = len(traces)
    assert traced >= 1
    for seed in (2, 4):
        state, metrics = step(state, {**batch(seed), "id": ids + seed}, batch(seed + 1))
    assert len(traces) == traced, "the jitted step was traced again"
    assert int(state.step) == 3 and bool(jnp.isfinite(metrics["loss"]))


# --- (e) misuse is named ----------------------------------------------------------------------


class StatsOnly(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.zeros(3))


class IntParam(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(3))


def test_split_model_errors():
    with pytest.raises(ValueError, match=r"takes an nnx\.Module; got dict"):
        amal_nnx.split_model({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"no nnx\.Param variables \(it holds BatchStat\)"):
        amal_nnx.split_model(StatsOnly())
    with pytest.raises(ValueError, match=r"nnx\.Param w has dtype int"):
        amal_nnx.split_model(IntParam())


def test_loss_functions_errors():
    model = Net(nnx.Rngs(0))
    graphdef, _, _ = amal_nnx.split_model(model)
    with pytest.raises(ValueError, match="you passed the module itself"):
        amal_nnx.loss_functions(model, losses, val_loss)
    with pytest.raises(ValueError, match=r"val_loss must be callable as val_loss\(model, batch\)"):
        amal_nnx.loss_functions(graphdef, losses, None)
    with pytest.raises(ValueError, match=r"graphdef from amal_jax\.nnx\.split_model"):
        amal_nnx.merge(None, {})


def _config(graphdef, **kw):
    loss_fn, val_loss_fn = amal_nnx.loss_functions(graphdef, losses, val_loss)
    return amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.1),
        mixer=amal_jax.global_weights(2),
        meta_optimizer=optax.sgd(1.0),
        **kw,
    )


def test_whole_split_state_as_params_is_named():
    # BatchNorm only: every leaf is a float, so init accepts it; the loss function does not.
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs))
    graphdef, whole = nnx.split(model)
    config = _config(graphdef, stateful=True)
    state = amal_jax.init(config, whole, key=jax.random.key(0), model_state=nnx.State({}))
    with pytest.raises(ValueError, match=r"params hold a BatchStat at layers/1/mean.*nnx\.split"):
        amal_jax.step(state, batch(0), batch(1))
    # With Dropout the random stream's counter is an integer: init names that leaf.
    graphdef, whole = nnx.split(Net(nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\['drop'\]\['rngs'\]\['count'\].*uint32"):
        amal_jax.init(_config(graphdef, stateful=True), whole, key=jax.random.key(0))


def test_swapped_or_missing_model_state_and_stateless_config_are_named():
    graphdef, params, model_state = amal_nnx.split_model(Net(nnx.Rngs(0)))
    loss_fn, val_loss_fn = amal_nnx.loss_functions(graphdef, losses, val_loss)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="were params and model_state swapped"):
        loss_fn(params, batch(0), params, key)
    with pytest.raises(ValueError, match=r"could not rebuild the module.*\(model_state is None\)"):
        val_loss_fn(params, batch(0), None)
    config = _config(graphdef, stateful=False)
    state = amal_jax.init(config, params, key=key)
    with pytest.raises(ValueError, match="stateful=True"):
        amal_jax.step(state, batch(0), batch(1))
    with pytest.raises(ValueError, match="pass an AmalState alone"):
        amal_nnx.merge(graphdef, state, model_state)


def test_merge_gives_an_eval_mode_copy():
    graphdef, state = setup()
    model = amal_nnx.merge(graphdef, state)
    assert model.drop.deterministic and model.bn.use_running_average
    x = batch(0)["x"]
    np.testing.assert_allclose(
        model(x), hand_eval_forward(pure(state.params), pure(state.model_state), x), **F32
    )
    jax.jit(amal_jax.step, donate_argnums=0)(state, batch(0), batch(1))  # deletes the state
    assert np.isfinite(np.asarray(model(x))).all()  # the module holds its own arrays


def test_import_amal_jax_does_not_import_the_nnx_module():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    code = (
        "import sys, amal_jax; assert 'amal_jax.nnx' not in sys.modules, 'imported'; "
        "assert callable(amal_jax.nnx.split_model); assert 'amal_jax.nnx' in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in amal_nnx.__all__:
        assert callable(getattr(amal_nnx, name)), name


# --- the example (the README's NNX block runs in test_readme.py) ----------------------------------


def test_nnx_example_runs_quick(capsys):
    module = load_example(ROOT / "examples" / "nnx_batchnorm.py")
    try:
        results = module.main(["--quick"])
    finally:
        sys.modules.pop(module.__name__, None)
    out = capsys.readouterr().out
    for section in ("== AMAL", "== fixed-mix baseline", "== results", "AMAL - fixed mix"):
        assert section in out, out
    chance = 1.0 / results["num_classes"]
    for name in ("amal_test_accuracy", "baseline_test_accuracy"):
        acc = results[name]
        assert math.isfinite(acc) and acc > chance + 0.2, (name, acc)
    assert results["batch_stats_finite"]
    # The clean validation set pushes each label's weight down where that label is wrong.
    for name in ("a", "b"):
        assert results[f"weight_{name}_wrong"] < results[f"weight_{name}_right"] - 0.2, results
