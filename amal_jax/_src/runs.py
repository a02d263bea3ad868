"""Many runs of any method in one program: states stacked along a leading run axis, shared data.

``init_runs`` builds ``S`` states at once (one seed each, optionally different initial
parameters or optimizer hyperparameters) and ``step_runs`` advances all of them on the same
training and validation batches: one compiled program for all ``S`` runs instead of ``S``
programs called one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from amal_jax._src.methods import engine_of, init, step
from amal_jax._src.state import AmalState

__all__ = ["init_runs", "step_runs"]

PyTree = Any


def _run_keys(keys: Any) -> jax.Array:
    """``[S]`` typed PRNG keys from typed keys or from integer seeds."""
    if isinstance(keys, (int, np.integer)) or keys is None:
        raise ValueError(
            "keys must be S PRNG keys (jax.random.split(jax.random.key(0), S)) or a sequence "
            f"of S integer seeds; got {keys!r}."
        )
    keys = keys if isinstance(keys, jax.Array) else jnp.asarray(keys)
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1 or keys.shape[0] == 0:
            raise ValueError(
                f"keys must be a 1-D array of S >= 1 PRNG keys; got shape {keys.shape}."
            )
        return keys
    if jnp.issubdtype(keys.dtype, jnp.integer) and keys.ndim == 1 and keys.shape[0] > 0:
        return jax.vmap(jax.random.key)(keys)
    raise ValueError(
        "keys must be S PRNG keys (jax.random.split(jax.random.key(0), S)) or a 1-D sequence "
        f"of S integer seeds; got dtype {keys.dtype}, shape {keys.shape}."
    )


def _leading_axes(tree: PyTree, what: str, expected: int | None = None) -> int | None:
    """The common leading axis of every leaf of ``tree``; raises, naming a leaf, if none."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    size = expected
    for path, leaf in leaves:
        shape = np.shape(leaf)
        name = f"{what}{jax.tree_util.keystr(path)}"
        if not shape:
            raise ValueError(
                f"{name} is a scalar: every leaf of a stacked {what} needs a leading run axis"
                + (f" of size S = {size}." if size is not None else ".")
            )
        if size is None:
            size = shape[0]
        elif shape[0] != size:
            raise ValueError(
                f"{name} has a leading axis of {shape[0]}, expected S = {size} (one entry per run)."
            )
    return size


def _find_inject_states(opt_state: PyTree):
    def is_inject(x):  # optax's InjectHyperparamsState / InjectStatefulHyperparamsState
        return isinstance(getattr(x, "hyperparams", None), dict) and hasattr(x, "_replace")

    return is_inject, [x for x in jax.tree.leaves(opt_state, is_leaf=is_inject) if is_inject(x)]


def _with_hyperparams(opt_state: PyTree, values: Mapping[str, Any], runs: int, what: str):
    """``opt_state`` with the named ``inject_hyperparams`` entries set to per-run values."""
    is_inject, found = _find_inject_states(opt_state)
    if not found:
        raise ValueError(
            f"{what}: setting hyperparameters per run needs the {what} wrapped in "
            "optax.inject_hyperparams (e.g. optax.inject_hyperparams(optax.sgd)("
            "learning_rate=0.1)), so that they live in its state."
        )
    for name in values:
        holders = [s for s in found if name in s.hyperparams]
        if len(holders) != 1:
            names = sorted({n for s in found for n in s.hyperparams})
            problem = "no" if not holders else f"{len(holders)}"
            raise ValueError(
                f"{what}: {problem} inject_hyperparams states hold {name!r} (one is needed); "
                f"hyperparameters there: {names}."
            )

    def replace(node):
        if not is_inject(node):
            return node
        hyper = dict(node.hyperparams)
        for name, value in values.items():
            if name not in hyper:
                continue
            old = hyper[name]
            new = jnp.asarray(value, dtype=old.dtype)
            if new.ndim == 0:
                new = jnp.broadcast_to(new, old.shape)
            if new.shape != old.shape:
                raise ValueError(
                    f"{what}: hyperparameter {name!r} needs one value per run, shape "
                    f"{old.shape} (S = {runs}); got shape {new.shape}."
                )
            hyper[name] = new
        return node._replace(hyperparams=hyper)

    return jax.tree.map(replace, opt_state, is_leaf=is_inject)


def init_runs(
    config: Any,
    params: PyTree | Callable[[jax.Array], PyTree],
    keys: Any,
    *,
    model_state: PyTree = None,
    hyperparams: Mapping[str, Any] | None = None,
    meta_hyperparams: Mapping[str, Any] | None = None,
) -> AmalState:
    """``S`` initial states stacked along a leading run axis, for :func:`step_runs`.

    Run ``i`` is ``amal_jax.init(config, params_i, key=keys[i], model_state=model_state_i)``:
    every array leaf of the result has a leading axis of size ``S`` and
    ``jax.tree.map(lambda x: x[i], states)`` is run ``i`` alone (a plain
    :class:`~amal_jax.AmalState` for :func:`amal_jax.step`, a checkpoint, ...).

    Args:
        config: the static configuration, shared by every run.
        params: either a function ``key -> params`` (``key -> (params, model_state)`` with
            ``stateful=True``), called for run ``i`` with ``jax.random.split(keys[i])[0]``
            (so the model's initial randomness is not the state's key; ``lambda key: params``
            starts every run from the same ``params``), or a pytree of per-run parameters
            whose every leaf has a leading axis of size ``S``. Any callable counts as the
            function: stacked parameters that are themselves callable (an equinox module)
            go in as ``lambda key: ...`` of one run's, or through ``jax.vmap(amal_jax.init)``.
        keys: ``S`` PRNG keys (``jax.random.split(jax.random.key(0), S)``), or ``S`` integer
            seeds (run ``i`` gets ``jax.random.key(seeds[i])``).
        model_state: per-run model state stacked like ``params`` (``stateful=True`` with
            stacked ``params`` only).
        hyperparams / meta_hyperparams: per-run values (``[S]`` or a scalar) for
            hyperparameters of the model optimizer / the meta-optimizer, which must then be
            wrapped in ``optax.inject_hyperparams`` (so the values live in the optimizer
            state and each run keeps its own), e.g. ``meta_hyperparams={"learning_rate":
            jnp.array([0.01, 0.1, 1.0])}``.

    Returns:
        The stacked :class:`~amal_jax.AmalState`.

    Example:
        >>> import jax, jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(
        ...     loss_fn=lambda p, b: (b["x"][:, None] * p - b["y"]) ** 2,
        ...     val_loss_fn=lambda p, b: jnp.mean((b["x"] * p - b["y"][:, 0]) ** 2),
        ...     optimizer=optax.sgd(0.1), mixer=amal_jax.global_weights(2),
        ...     meta_optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=1.0))
        >>> states = amal_jax.init_runs(
        ...     cfg, lambda key: jnp.float32(0.0), [0, 1, 2],
        ...     meta_hyperparams={"learning_rate": jnp.array([0.0, 0.5, 1.0])})
        >>> states.step.shape, states.mix_params.shape
        ((3,), (3, 2))
    """
    engine_of(config, "init_runs")  # any method's configuration, or a clear error
    keys = _run_keys(keys)
    runs = keys.shape[0]

    if callable(params):
        if model_state is not None:
            raise ValueError(
                "model_state goes with stacked params; a params function returns "
                "(params, model_state) itself when config.stateful."
            )
        make = params

        def one(key):
            out = make(jax.random.split(key)[0])
            if config.stateful:
                if not (isinstance(out, (tuple, list)) and len(out) == 2):
                    raise ValueError(
                        "with stateful=True, the params function must return (params, "
                        f"model_state); got {type(out).__name__}."
                    )
                p, ms = out
            else:
                p, ms = out, None
            return init(config, p, key=key, model_state=ms)

        def build(keys):
            return jax.vmap(one)(keys)

        args = (keys,)
    else:
        _leading_axes(params, "params", runs)
        if model_state is not None:
            _leading_axes(model_state, "model_state", runs)

        def one(p, ms, key):
            return init(config, p, key=key, model_state=ms)

        def build(params, model_state, keys):
            return jax.vmap(one)(params, model_state, keys)

        args = (params, model_state, keys)

    def build_all(*args):  # one program; a bad hyperparameter raises before it is compiled
        states = build(*args)
        if hyperparams:
            states = states._replace(
                opt_state=_with_hyperparams(states.opt_state, hyperparams, runs, "optimizer")
            )
        if meta_hyperparams:
            states = states._replace(
                meta_opt_state=_with_hyperparams(
                    states.meta_opt_state, meta_hyperparams, runs, "meta_optimizer"
                )
            )
        return states

    return jax.jit(build_all)(*args)


def _static_meta(meta: Any) -> bool | None:
    if isinstance(meta, np.bool_):
        return bool(meta)  # e.g. a host-side schedule computed with numpy: static all the same
    if meta is not None and not isinstance(meta, bool):
        raise ValueError(
            f"meta must be None, True or False (static: a Python or NumPy bool); got {meta!r}."
        )
    return meta


def step_runs(
    states: AmalState, train_batch: Any, val_batch: Any, meta: bool | None = None
) -> tuple[AmalState, dict]:
    """One :func:`amal_jax.step` of every run in ``states``, on the same batches.

    ``jax.vmap(amal_jax.step, in_axes=(0, None, None))``: the runs' states (from
    :func:`init_runs`) are mapped over their leading axis and the batches are shared. Run
    ``i`` of the result equals ``amal_jax.step`` of run ``i`` alone (to float tolerance: XLA
    may order a batched reduction differently). Jit it like the step, with ``meta`` static::

        run = jax.jit(amal_jax.step_runs, static_argnames="meta", donate_argnums=0)
        for i, (train_batch, val_batch) in enumerate(batches):
            states, metrics = run(states, train_batch, val_batch,
                                  meta=amal_jax.is_meta_step(config, i))

    Args:
        states: stacked states (every array leaf with the same leading run axis ``S``).
        train_batch, val_batch: one training and one validation batch, shared by every run
            (no run axis).
        meta: as in :func:`amal_jax.step`: ``None`` follows the schedule inside the program
            (under ``vmap`` its ``lax.cond`` becomes a select that computes both branches,
            so with ``meta_every > 1`` or ``warmup_steps`` pass ``meta``), ``True`` /
            ``False`` (Python or NumPy bools) force a meta update or none, statically.

    Returns:
        ``(new_states, metrics)``, every metric with a leading run axis.

    Example:
        >>> import jax, jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(
        ...     loss_fn=lambda p, b: (b["x"][:, None] * p - b["y"]) ** 2,
        ...     val_loss_fn=lambda p, b: jnp.mean((b["x"] * p - b["y"][:, 0]) ** 2),
        ...     optimizer=optax.sgd(0.1), mixer=amal_jax.global_weights(2),
        ...     meta_optimizer=optax.sgd(1.0))
        >>> states = amal_jax.init_runs(cfg, jnp.zeros(4), jax.random.split(jax.random.key(0), 4))
        >>> batch = {"x": jnp.ones(8), "y": jnp.ones((8, 2))}
        >>> run = jax.jit(amal_jax.step_runs, static_argnames="meta")
        >>> states, metrics = run(states, batch, batch, meta=True)
        >>> states.step.tolist(), metrics["loss"].shape
        ([1, 1, 1, 1], (4,))
    """
    if not isinstance(states, AmalState):
        raise ValueError(
            "step_runs takes stacked states from amal_jax.init_runs(config, params, keys); got "
            f"{type(states).__name__}."
        )
    if np.ndim(states.step) != 1:
        raise ValueError(
            f"step_runs takes states with a leading run axis (from amal_jax.init_runs); this "
            f"state's step counter has shape {np.shape(states.step)}"
            + (": a single run, for amal_jax.step." if np.ndim(states.step) == 0 else ".")
        )
    _leading_axes(states, "states", np.shape(states.step)[0])
    meta = _static_meta(meta)

    def one(state):
        return step(state, train_batch, val_batch, meta=meta)

    return jax.vmap(one)(states)
