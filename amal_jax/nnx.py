"""Flax NNX modules, BatchNorm and Dropout included, through :func:`amal_jax.step`.

:func:`amal_jax.step` is a pure function of pytrees; an ``nnx.Module`` is a mutable Python
object. This module connects the two the way ``nnx.split`` / ``nnx.merge`` do::

    graphdef, params, model_state = amal_jax.nnx.split_model(model)   # nnx.Param | the rest
    loss_fn, val_loss_fn = amal_jax.nnx.loss_functions(graphdef, losses, val_loss)
    config = amal_jax.AmalConfig(loss_fn=loss_fn, val_loss_fn=val_loss_fn, stateful=True, ...)
    state = amal_jax.init(config, params, key=key, model_state=model_state)
    ...                                                     # jax.jit(amal_jax.step) as usual
    model = amal_jax.nnx.merge(graphdef, state)              # the trained module, eval mode

You write ``losses(model, batch) -> [B, K]`` and ``val_loss(model, batch) -> ()`` against the
module itself. Inside every call the module is rebuilt with ``nnx.merge`` (so nothing is
mutated across JAX trace levels, the cause of ``TraceContextError: Cannot mutate BatchStat
from a different trace level``), and:

- the training loss runs in train mode (``model.train()``: BatchNorm normalises with the
  batch statistics and updates its running averages, Dropout is active). Dropout draws from
  the step's ``key``, not from the module's own random state: the ``i``-th ``nnx.RngStream``
  in ``nnx.iter_graph(model)`` order is reseeded with ``jax.random.fold_in(key, i)`` and a
  count of 0 before the forward pass. The module's random state in ``model_state`` is
  returned unchanged, so a step is a deterministic function of the AMAL state, and the
  look-ahead passes (which call the same function with the same key) never advance it;
- the new ``model_state`` is the module's state after that forward pass: the running
  averages are updated once per step, from the training batch at the pre-step parameters
  (:func:`amal_jax.step` takes it from the training forward pass, never from a look-ahead);
- the validation loss runs in eval mode (``model.eval()``: running averages, no dropout)
  and leaves the state alone.

Only ``flax.nnx`` is needed; ``import amal_jax`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from amal_jax import AmalState

__all__ = ["loss_functions", "merge", "split_model"]

_MISSING = object()


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _variables(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` of every Variable (or plain array) in a State / nested dict."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]:
        out.append(("/".join(str(getattr(k, "key", k)) for k in path) or "(root)", leaf))
    return out


def _kind(leaf: Any) -> str:
    return type(leaf).__name__


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Splits a module into its structure, its parameters and everything else.

    The same as ``nnx.split(model, nnx.Param, ...)``, with checks: ``params`` holds the
    ``nnx.Param`` variables (what the optimizer and the look-ahead move) and
    ``model_state`` every other variable (``nnx.BatchStat``, the ``nnx.RngKey`` /
    ``nnx.RngCount`` of Dropout's random streams, your own variable types), which
    ``amal_jax.step`` carries without differentiating it.

    Args:
        model: an ``nnx.Module`` with at least one floating-point ``nnx.Param``.

    Returns:
        ``(graphdef, params, model_state)``: pass ``graphdef`` to :func:`loss_functions` and
        :func:`merge`, and ``params`` and ``model_state`` to ``amal_jax.init(config, params,
        key=key, model_state=model_state)``.

    Raises:
        ValueError: ``model`` is not an ``nnx.Module``, has no ``nnx.Param``, or has a
            ``nnx.Param`` that is not floating point.

    Example:
        >>> from flax import nnx
        >>> import amal_jax.nnx
        >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        ...                        nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
        >>> graphdef, params, model_state = amal_jax.nnx.split_model(model)
        >>> sorted(params["layers"][0]), sorted(model_state["layers"][1])
        (['bias', 'kernel'], ['mean', 'var'])
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(
            f"split_model takes an nnx.Module; got {type(model).__name__}. (A Linen module's "
            "variables are plain pytrees: pass them to amal_jax.init directly.)"
        )
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    leaves = _variables(params)
    if not leaves:
        kinds = sorted({_kind(v) for _, v in _variables(model_state)})
        raise ValueError(
            f"the module {type(model).__name__} has no nnx.Param variables (it holds "
            f"{', '.join(kinds) or 'no variables at all'}): there is nothing to train. "
            "Trainable arrays must be nnx.Param (nnx.Linear, nnx.Conv, ... create them)."
        )
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf[...] if _is_variable(leaf) else leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"nnx.Param {path} has dtype {dtype}: every parameter must be floating point "
                "(the look-ahead differentiates them); keep integer state in another "
                "nnx.Variable type, which split_model puts in model_state."
            )
    return graphdef, params, model_state


def _check_graphdef(graphdef: Any, what: str) -> None:
    if not isinstance(graphdef, nnx.GraphDef):
        hint = (
            " (you passed the module itself: use the graphdef from split_model(model))"
            if isinstance(graphdef, nnx.Module)
            else ""
        )
        raise ValueError(
            f"{what} takes the graphdef from amal_jax.nnx.split_model(model); got "
            f"{type(graphdef).__name__}{hint}."
        )


def _check_parts(params: Any, model_state: Any, what: str) -> None:
    """Params hold only ``nnx.Param``; model_state holds none."""
    if params is None:
        raise ValueError(f"{what}: params is None; pass the params from split_model(model).")
    for path, leaf in _variables(params):
        if _is_variable(leaf) and not isinstance(leaf, nnx.Param):
            raise ValueError(
                f"{what}: params hold a {_kind(leaf)} at {path}, which is not an nnx.Param "
                "(was the whole nnx.split(model) / nnx.state(model) state passed as params?). "
                "Split with graphdef, params, model_state = amal_jax.nnx.split_model(model), "
                "then amal_jax.init(config, params, key=key, model_state=model_state)."
            )
    for path, leaf in _variables(model_state):
        if isinstance(leaf, nnx.Param):
            raise ValueError(
                f"{what}: model_state holds the nnx.Param {path}; parameters belong in params "
                "(were params and model_state swapped?)."
            )


def _merge(graphdef: nnx.GraphDef, params: Any, model_state: Any, what: str) -> nnx.Module:
    """A fresh module, whose variables belong to the current trace."""
    _check_parts(params, model_state, what)
    states = (params,) if model_state is None else (params, model_state)
    try:
        try:
            return nnx.merge(graphdef, *states, copy=True)
        except TypeError as error:  # a flax without merge(..., copy=)
            if "copy" not in str(error):
                raise
            # Rebuilding the Variables from their arrays makes new ones, in this trace.
            return nnx.merge(graphdef, *jax.tree.map(lambda x: x, states))
    except Exception as error:
        missing = " (model_state is None)" if model_state is None else ""
        raise ValueError(
            f"{what}: could not rebuild the module from graphdef, params and model_state"
            f"{missing}: {type(error).__name__}: {error}. Pass the three values that "
            "amal_jax.nnx.split_model(model) returned, and model_state=model_state to "
            "amal_jax.init."
        ) from error


def _set(variable: nnx.Variable, value: jax.Array) -> None:
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:  # older flax
        variable.value = value


def _reseed(model: nnx.Module, key: Any) -> None:
    """The ``i``-th RngStream of the module draws from ``fold_in(key, i)``, count 0."""
    streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
    if not streams:
        return
    if key is None:
        raise ValueError(
            "the module has random streams (Dropout) but loss_fn got key=None; amal_jax.step "
            "passes the step's key (a PRNG key from amal_jax.init(..., key=...))."
        )
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    for i, stream in enumerate(streams):
        shape = tuple(stream.key.shape)
        new_key = jax.random.fold_in(key, i)
        if shape:
            new_key = jax.random.split(new_key, shape)
        _set(stream.key, new_key)
        _set(stream.count, jnp.zeros(shape, jnp.uint32))


def _keep_random_state(new: Any, old: Any) -> Any:
    """``new`` with every ``nnx.RngState`` variable taken from ``old``."""
    try:
        return jax.tree.map(
            lambda n, o: o if isinstance(o, nnx.RngState) else n, new, old, is_leaf=_is_variable
        )
    except ValueError as error:
        raise ValueError(
            "the module's state after the training forward pass has a different structure "
            f"from model_state ({error}); the forward pass must not add or remove variables."
        ) from error


def loss_functions(
    graphdef: nnx.GraphDef,
    losses: Callable[[nnx.Module, Any], jax.Array],
    val_loss: Callable[[nnx.Module, Any], jax.Array],
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Builds the ``stateful=True`` ``loss_fn`` and ``val_loss_fn`` of an ``AmalConfig``.

    Args:
        graphdef: the module's structure, from :func:`split_model`.
        losses: ``losses(model, batch) -> [B, K]``, the per-example, per-loss training
            values, computed with the module (e.g. ``amal_jax.stack_losses(...)`` of
            ``model(batch["x"])``). It sees the module in train mode, with Dropout's streams
            seeded from the step's key.
        val_loss: ``val_loss(model, batch) -> ()``, the scalar validation loss. It sees the
            module in eval mode (``model.eval()``: running statistics, no dropout).

    Returns:
        ``(loss_fn, val_loss_fn)`` with the signatures ``amal_jax.AmalConfig(...,
        stateful=True)`` expects: ``loss_fn(params, batch, model_state, key) -> (losses,
        new_model_state)`` and ``val_loss_fn(params, batch, model_state) -> ()``. Both are
        pure: the module is rebuilt with ``nnx.merge`` in every call. ``new_model_state``
        holds the BatchNorm statistics after the forward pass and the random state of
        ``model_state`` unchanged.

    Raises:
        ValueError: ``graphdef`` is not an ``nnx.GraphDef`` or a loss is not callable; when
            called: the config is not ``stateful=True``, ``params`` hold variables other
            than ``nnx.Param`` (such as the whole ``nnx.split(model)`` state),
            ``model_state`` holds an ``nnx.Param``, or the module cannot be rebuilt from
            them (``model_state`` missing from ``amal_jax.init``).

    Example:
        >>> import jax, jax.numpy as jnp, optax, amal_jax, amal_jax.nnx
        >>> from flax import nnx
        >>> rngs = nnx.Rngs(0)
        >>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs),
        ...                        nnx.Dropout(0.2, rngs=rngs), nnx.Linear(4, 2, rngs=rngs))
        >>> graphdef, params, model_state = amal_jax.nnx.split_model(model)
        >>> def losses(model, batch):  # [B, 2]: the label and a second, noisier label
        ...     logits = model(batch["x"])
        ...     return amal_jax.stack_losses(amal_jax.cross_entropy(logits, batch["y"]),
        ...                                  amal_jax.cross_entropy(logits, batch["y2"]))
        >>> def val_loss(model, batch):
        ...     return amal_jax.cross_entropy(model(batch["x"]), batch["y"]).mean()
        >>> loss_fn, val_loss_fn = amal_jax.nnx.loss_functions(graphdef, losses, val_loss)
        >>> config = amal_jax.AmalConfig(
        ...     loss_fn=loss_fn, val_loss_fn=val_loss_fn, optimizer=optax.sgd(0.1),
        ...     mixer=amal_jax.global_weights(2), meta_optimizer=optax.sgd(0.1), stateful=True)
        >>> state = amal_jax.init(config, params, key=jax.random.key(0), model_state=model_state)
        >>> batch = {"x": jnp.ones((4, 2)), "y": jnp.array([0, 1, 0, 1]), "y2": jnp.zeros(4, int)}
        >>> state, metrics = jax.jit(amal_jax.step)(state, batch, batch)
        >>> bool(metrics["meta_updated"]), int(state.step)
        (True, 1)
    """
    _check_graphdef(graphdef, "loss_functions")
    for name, fn in (("losses", losses), ("val_loss", val_loss)):
        if not callable(fn):
            raise ValueError(
                f"{name} must be callable as {name}(model, batch); got {type(fn).__name__}."
            )

    def loss_fn(params, batch, model_state=_MISSING, key=_MISSING):
        if model_state is _MISSING or key is _MISSING:
            raise ValueError(
                "this loss_fn comes from amal_jax.nnx.loss_functions and takes (params, batch, "
                "model_state, key): build the AmalConfig with stateful=True and pass "
                "model_state=model_state to amal_jax.init."
            )
        model = _merge(graphdef, params, model_state, "loss_fn")
        model.train()
        _reseed(model, key)
        values = losses(model, batch)
        _, _, new_state = nnx.split(model, nnx.Param, ...)
        return values, _keep_random_state(new_state, model_state)

    def val_loss_fn(params, batch, model_state=_MISSING):
        if model_state is _MISSING:
            raise ValueError(
                "this val_loss_fn comes from amal_jax.nnx.loss_functions and takes (params, "
                "batch, model_state): build the AmalConfig with stateful=True."
            )
        model = _merge(graphdef, params, model_state, "val_loss_fn")
        model.eval()
        return val_loss(model, batch)

    return loss_fn, val_loss_fn


def merge(
    graphdef: nnx.GraphDef, params: AmalState | nnx.State, model_state: nnx.State | None = None
) -> nnx.Module:
    """The module with the given (trained) variables, in eval mode, for evaluation.

    Args:
        graphdef: the module's structure, from :func:`split_model`.
        params: an ``amal_jax.AmalState`` (its ``params`` and ``model_state`` are used), or
            the ``nnx.Param`` state.
        model_state: the other variables, when ``params`` is not an ``AmalState``.

    Returns:
        A new module holding copies of the arrays (a later step that donates the state
        does not invalidate it), switched to eval mode with ``model.eval()``; call
        ``model.train()`` to change that. To write the trained values into an existing
        module instead, use ``nnx.update(model, state.params, state.model_state)``.

    Raises:
        ValueError: ``graphdef`` is not an ``nnx.GraphDef``, or the variables do not fit it.

    Example:
        >>> import jax.numpy as jnp, amal_jax.nnx
        >>> from flax import nnx
        >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
        >>> graphdef, params, model_state = amal_jax.nnx.split_model(model)
        >>> trained = amal_jax.nnx.merge(graphdef, params, model_state)
        >>> trained.layers[1].deterministic, trained(jnp.ones((1, 2))).shape
        (True, (1, 3))
    """
    _check_graphdef(graphdef, "merge")
    if isinstance(params, AmalState):
        if model_state is not None:
            raise ValueError("merge: pass an AmalState alone, or params and model_state.")
        params, model_state = params.params, params.model_state
    copies = jax.tree.map(lambda x: jnp.array(x, copy=True), (params, model_state))
    model = _merge(graphdef, *copies, "merge")
    model.eval()
    return model
