"""The test suite's toolkit: tolerances, the float64 switch, tree assertions, finite
differences and the tiny models and configurations the tests share.

Tests import from here (``from helpers import ...``); ``conftest.py`` holds only fixtures and
the pytest configuration.
"""

from __future__ import annotations

import importlib.util
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import amal_jax

# Tolerances live here only.
F32 = {"rtol": 1e-5, "atol": 1e-6}
F64 = {"rtol": 1e-10, "atol": 1e-12}
# bfloat16 compute (compute_dtype=jnp.bfloat16) against float32: bfloat16 keeps 8 significant
# bits (eps 7.8e-3); over 10 training steps of the tests' MLP the relative error of a whole
# parameter leaf measured 0.7% at most, of the first step's losses 0.3%.
BF16 = {"rtol": 2e-2, "atol": 5e-3}
FD_RTOL = 1e-6  # finite differences in float64


def x64():
    """Context manager enabling float64 (``jax.enable_x64`` on new JAX, experimental on old)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # JAX < 0.5

    return enable_x64()


def _np(tree):
    """The leaves as numpy arrays (typed PRNG keys as their key data)."""

    def leaf(x):
        if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def assert_trees_close(a, b, tol):
    """Same structure, leaves within ``tol`` (F32 / F64); a failure names the leaf's path."""
    chex.assert_trees_all_close(_np(a), _np(b), **tol)


def assert_trees_equal(a, b):
    chex.assert_trees_all_equal(_np(a), _np(b))


def finite_differences(fn, weights, eps=1e-6):
    flat = np.asarray(weights).ravel()
    out = np.zeros_like(flat)
    for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        out[i] = (fn(plus.reshape(weights.shape)) - fn(minus.reshape(weights.shape))) / (2 * eps)
    return out.reshape(weights.shape)


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def mlp_params(key, sizes, dtype=jnp.float32):
    """A plain-pytree MLP: {"layer_i": {"w", "b"}}; the last layer is named "head"."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        name = "head" if i == len(sizes) - 2 else f"layer_{i}"
        params[name] = {
            "w": (jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)).astype(dtype),
            "b": jnp.full((fan_out,), 0.01, dtype),
        }
    return params


def mlp_apply(params, x):
    names = sorted(k for k in params if k != "head")
    for name in names:
        x = jnp.tanh(x @ params[name]["w"] + params[name]["b"])
    return x @ params["head"]["w"] + params["head"]["b"]


def head_mask(params):
    return {name: jax.tree.map(lambda _, n=name: n == "head", v) for name, v in params.items()}


def kd_loss_fn(params, batch):
    """[B, 2]: CE to the label, KD to the teacher's logits."""
    logits = mlp_apply(params, batch["x"])
    return amal_jax.stack_losses(
        amal_jax.cross_entropy(logits, batch["y"]),
        amal_jax.kd_loss(logits, batch["teacher"], 2.0),
    )


def val_ce(params, batch):
    return jnp.mean(amal_jax.cross_entropy(mlp_apply(params, batch["x"]), batch["y"]))


def make_batch(key, n, features=3, classes=3, dtype=jnp.float32, with_ids=True, num_examples=64):
    kx, ky, kt, ki = jax.random.split(key, 4)
    batch = {
        "x": jax.random.normal(kx, (n, features)).astype(dtype),
        "y": jax.random.randint(ky, (n,), 0, classes),
        "teacher": (2.0 * jax.random.normal(kt, (n, classes))).astype(dtype),
    }
    if with_ids:
        batch["id"] = jax.random.choice(ki, num_examples, (n,), replace=False)
    return batch


TABLE_ROWS = 64  # training-set size for the tests' table mixers


def amal_config(**kw):
    """The tests' AMAL configuration: the KD problem, SGD with momentum, a table mixer."""
    base = dict(
        loss_fn=kd_loss_fn,
        val_loss_fn=val_ce,
        optimizer=optax.sgd(0.3, momentum=0.9),
        mixer=amal_jax.table(TABLE_ROWS, 2),
        meta_optimizer=optax.sgd(10.0),
    )
    base.update(kw)
    return amal_jax.AmalConfig(**base)


def setup_state(cfg, seed=0, batch=8):
    """An initial state for ``cfg``, a training batch with ids and a validation batch."""
    kp, kb, kv, ks = jax.random.split(jax.random.key(seed), 4)
    state = amal_jax.init(cfg, mlp_params(kp, (3, 6, 3)), key=ks)
    train = make_batch(kb, batch, num_examples=TABLE_ROWS)
    return state, train, make_batch(kv, 10, with_ids=False)


def reference_hypergradient(state, train, valid, **kw):
    """The table rows of the batch and ``amal_jax.hypergradient`` at them (the reference)."""
    weights = state.mix_params[train["id"]]
    hyper = amal_jax.hypergradient(
        kd_loss_fn,
        val_ce,
        state.params,
        weights,
        train,
        valid,
        optimizer=state.config.optimizer,
        opt_state=state.opt_state,
        **kw,
    )
    return weights, hyper


class BNNet(nn.Module):
    """Dense -> BatchNorm -> Dropout -> Dense: exercises model state and keys."""

    classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        x = nn.relu(x)
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(self.classes)(x)


def bn_losses(model: BNNet):
    """``(loss_fn, val_loss_fn)`` of a stateful :class:`BNNet`: ``[B, 2]`` cross-entropy and
    KD to ``batch["teacher"]`` with BatchNorm updates and dropout; the validation loss is
    the mean cross-entropy with the running statistics."""

    def loss_fn(params, batch, model_state, key):
        logits, updates = model.apply(
            {"params": params, **model_state},
            batch["x"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        losses = amal_jax.stack_losses(
            amal_jax.cross_entropy(logits, batch["y"]),
            amal_jax.kd_loss(logits, batch["teacher"]),
        )
        return losses, updates

    def val_loss_fn(params, batch, model_state):
        logits = model.apply({"params": params, **model_state}, batch["x"], train=False)
        return jnp.mean(amal_jax.cross_entropy(logits, batch["y"]))

    return loss_fn, val_loss_fn


def standard_promotion(optimizer):
    """``optimizer`` with its own ``init`` / ``update`` traced under standard dtype promotion.

    The suite runs with strict promotion (conftest.py), but optax's adaptive optimizers and
    schedules mix their int32 step count with Python floats (``decay ** count`` in Adam's bias
    correction), which strict promotion refuses. This wrapper relaxes promotion inside optax
    only: amal_jax's code around the optimizer (look-ahead, hypergradient, step) stays strict.
    """

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return optimizer.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion("standard"):
            return optimizer.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def load_example(path):
    """Imports an example script as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclass machinery (Flax modules) looks the module up by name.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module
