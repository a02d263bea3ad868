"""Mixed precision (``AmalConfig(compute_dtype=jnp.bfloat16)``): the model runs in bfloat16,
parameters, losses, hypergradients and the mixer stay float32, and training follows float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import BF16, amal_config, rel_err, setup_state

import amal_jax
from amal_jax._src.precision import cast_floats


def _run(compute_dtype, estimator="jvp", steps=10, **kw):
    cfg = amal_config(
        compute_dtype=compute_dtype,
        estimator=estimator,
        normalize_hypergradient=True,
        meta_optimizer=optax.sgd(0.1),
        **kw,
    )
    state, train, valid = setup_state(cfg, batch=16)
    run = jax.jit(amal_jax.step)
    history = []
    for _ in range(steps):
        state, metrics = run(state, train, valid)
        history.append(metrics)
    return state, history


def test_bfloat16_compute_stays_finite_and_close_to_float32():
    full, full_metrics = _run(None)
    half, half_metrics = _run(jnp.bfloat16)
    # Master copies, optimizer and meta-optimizer states, the table: all float32.
    for tree in (half.params, half.opt_state, half.mix_params, half.meta_opt_state):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    for m in half_metrics:
        assert bool(m["hypergradient_finite"]) and not bool(m["meta_update_skipped"])
        assert not bool(m["train_update_skipped"])
        for key in ("loss", "val_loss_before", "hypergradient_abs_mean"):
            assert m[key].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(m[key]))), key
    # The first step's values, then 10 steps of training (relative error of each leaf as a
    # whole: single entries near 0 can differ more), within bfloat16's tolerance.
    for key in ("loss", "val_loss_before", "hypergradient_abs_mean"):
        np.testing.assert_allclose(half_metrics[0][key], full_metrics[0][key], **BF16)
    errors = {"mix_params": rel_err(half.mix_params, full.mix_params)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(half.params):
        reference = full.params
        for entry in path:
            reference = reference[entry.key]
        errors[jax.tree_util.keystr(path)] = rel_err(leaf, reference)
    assert max(errors.values()) < BF16["rtol"], errors
    # ...and not equal: the model really ran in bfloat16.
    assert float(jnp.max(jnp.abs(half.mix_params - full.mix_params))) > 0


def test_the_forward_pass_runs_in_the_compute_dtype():
    cfg = amal_config(compute_dtype=jnp.bfloat16)
    state, train, valid = setup_state(cfg)
    jaxpr = str(jax.make_jaxpr(amal_jax.step)(state, train, valid))
    assert "dot_general" in jaxpr and "bf16" in jaxpr
    plain = str(jax.make_jaxpr(amal_jax.step)(*setup_state(amal_config())))
    assert "bf16" not in plain


def test_loss_functions_see_the_compute_dtype_and_ids_stay_integers():
    seen = {}

    def loss_fn(params, batch):
        seen["params"] = params["head"]["w"].dtype
        seen["x"], seen["id"] = batch["x"].dtype, batch["id"].dtype
        return amal_config().loss_fn(params, batch)

    def val_loss_fn(params, batch):
        seen["val_x"] = batch["x"].dtype
        return amal_config().val_loss_fn(params, batch)

    cfg = amal_config(loss_fn=loss_fn, val_loss_fn=val_loss_fn, compute_dtype="bfloat16")
    assert cfg.compute_dtype == jnp.dtype(jnp.bfloat16)
    state, train, valid = setup_state(cfg)
    jax.eval_shape(amal_jax.step, state, train, valid)
    assert seen == {
        "params": jnp.bfloat16,
        "x": jnp.bfloat16,
        "id": jnp.int32,
        "val_x": jnp.bfloat16,
    }


def test_compute_dtype_is_validated_eagerly():
    for bad in (jnp.int32, "bf16x", bool, object()):
        with pytest.raises(ValueError, match="compute_dtype must be None or a floating dtype"):
            amal_config(compute_dtype=bad)
    # Equal settings give equal (equally hashed) configurations: one jit cache entry.
    a, b = amal_config(compute_dtype=jnp.bfloat16), amal_config(compute_dtype="bfloat16")
    assert a.compute_dtype == b.compute_dtype and hash(a.compute_dtype) == hash(b.compute_dtype)


def test_cast_floats_leaves_other_leaves_alone():
    tree = {"x": jnp.ones(2), "y": jnp.arange(2), "ok": jnp.array([True])}
    out = cast_floats(tree, jnp.bfloat16)
    assert (out["x"].dtype, out["y"].dtype, out["ok"].dtype) == (jnp.bfloat16, jnp.int32, bool)
