"""The compiled step: no hidden work, nothing computed twice (FLOP counts, never timing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import kd_loss_fn, make_batch, mlp_params, val_ce

import amal_jax
from amal_jax.internal import guard_model_update as _guard_model_update

B, N = 32, 64


def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.fixture(scope="module")
def problem():
    params = mlp_params(jax.random.key(0), (16, 64, 64, 3))
    train = make_batch(jax.random.key(1), B, features=16, num_examples=N)
    valid = make_batch(jax.random.key(2), B, features=16, with_ids=False)
    return params, train, valid


def config(**kw):
    return amal_jax.AmalConfig(
        loss_fn=kd_loss_fn,
        val_loss_fn=val_ce,
        optimizer=optax.sgd(0.1, momentum=0.9),
        mixer=amal_jax.table(N, 2),
        meta_optimizer=optax.sgd(0.1),
        **kw,
    )


def parts(params, train, valid):
    """FLOPs of a forward pass, a forward+backward, a forward+JVP, and a validation F+B."""
    w = jnp.full((B, 2), 0.5)
    tangent = jax.tree.map(lambda x: x + 1.0, params)
    f = flops(lambda p: kd_loss_fn(p, train), params)
    fb = flops(lambda p: jax.grad(lambda q: jnp.sum(w * kd_loss_fn(q, train)))(p), params)
    fj = flops(lambda p, t: jax.jvp(lambda q: kd_loss_fn(q, train), (p,), (t,))[1], params, tangent)
    val = flops(lambda p: jax.grad(val_ce)(p, valid), params)
    return f, fb - f, fj - f, val


def guard(state):
    """The finiteness guard of a model update: elementwise over params and optimizer state."""

    def fn(s):
        weights = jnp.ones((B, 2))
        losses = jnp.ones((B, 2))
        return _guard_model_update(s, weights, losses, s.params, s.opt_state, s.model_state)

    return flops(fn, state)


def test_step_without_meta_update_costs_a_plain_step(problem):
    params, train, valid = problem
    state = amal_jax.init(config(), params, key=jax.random.key(0))
    f, b, _, _ = parts(params, train, valid)
    no_meta = flops(lambda s, t, v: amal_jax.step(s, t, v, meta=False), state, train, valid)
    assert no_meta == pytest.approx(f + b + guard(state), rel=0.05)
    # The guard is O(parameters), not O(batch x parameters).
    assert guard(state) < 0.1 * (f + b)


@pytest.mark.parametrize("reuse", [False, True])
def test_exact_step_computes_nothing_twice(problem, reuse):
    """jvp step = forward + look-ahead backward + validation F+B + JVP (+ real backward)."""
    params, train, valid = problem
    state = amal_jax.init(config(reuse_lookahead=reuse), params, key=jax.random.key(0))
    f, b, j, val = parts(params, train, valid)
    expected = f + b + val + j + (0 if reuse else b) + guard(state)
    assert flops(amal_jax.step, state, train, valid) == pytest.approx(expected, rel=0.05)


def _primitive_names(jaxpr):
    """Every primitive in a jaxpr, nested ones (cond branches, pjit bodies) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    names |= _primitive_names(inner)
    return names


def test_scheduled_step_keeps_model_work_out_of_the_skip_branch(problem):
    params, train, valid = problem
    state = amal_jax.init(config(meta_every=10), params, key=jax.random.key(0))
    jaxpr = jax.make_jaxpr(amal_jax.step)(state, train, valid).jaxpr
    conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1
    skip, meta = conds[0].params["branches"]  # index 0 = predicate False
    assert "dot_general" not in _primitive_names(skip.jaxpr)
    assert "dot_general" in _primitive_names(meta.jaxpr)
