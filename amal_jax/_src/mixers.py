"""Mixers: how the ``[B, K]`` mixing weights of a batch are produced from learnable params.

A mixer is a :class:`Mixer` of pure functions (optax style)::

    params  = mixer.init(key)
    weights = mixer.apply(params, batch, losses)      # [B, K], non-negative
    updates = mixer.restrict_updates(updates, batch)  # meta updates touch only what the batch used
    params  = mixer.project(params)                   # the constraint, after every meta update

``losses`` is the batch's ``[B, K]`` loss matrix with gradients stopped (features for the
network mixer). Four mixers ship:

- :func:`table`: one weight per training example and loss, ``[N, K]``, indexed by the
  example ids carried in the batch (the paper's per-instance table);
- :func:`network`: a small Flax MLP from per-example features to ``K`` weights;
- :func:`global_weights`: ``K`` shared scalars (the classic hand-tuned ``alpha``, learned);
- :func:`trust_table`: a learned trust per loss column times a per-example table (many
  rules or teachers that each apply to few rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PAPER_CLAMP",
    "Mixer",
    "check_ids",
    "global_weights",
    "network",
    "paper_init_weights",
    "table",
    "trust_table",
]

PyTree = Any

#: The authors' clamp on table entries after each meta update.
PAPER_CLAMP = (1e-7, 2.0 - 1e-7)

CONSTRAINTS = ("clamp", "softplus")


class Mixer(NamedTuple):
    """A weight parameterisation: pure ``init`` / ``apply`` / ``restrict_updates`` / ``project``.

    Fields:
        init: ``key -> params``.
        apply: ``(params, batch, losses [B, K]) -> weights [B, K]`` (differentiable in params).
        restrict_updates: ``(updates, batch) -> updates``; zeroes meta updates to parameters
            this batch did not use (table rows of other examples).
        project: ``params -> params``; the constraint applied after each meta update.
        num_losses: ``K``.
        name: a short name for metrics and reports.
        per_example: whether each parameter belongs to one training example (the table).
            With ``normalize_hypergradient`` the meta gradient of a mixer whose parameters
            are shared by the batch (``False``: global weights, a network) is the batch
            mean of the per-example contributions, so that one meta learning rate moves
            weights by about the same amount whatever the mixer.
        batch_metrics: optional ``batch -> {name: [] int32}``, counts the step reports in its
            metrics (the table: ``invalid_ids``, rows whose id lies outside ``[0, N)`` and
            get weight 0; ``duplicate_ids``, rows whose id already occurred in the batch).
        check_batch: optional host-side ``batch -> None`` that raises ``ValueError`` on a
            batch the mixer cannot take (the table: ids outside ``[0, N)``, naming them).
    """

    init: Callable[[jax.Array], PyTree]
    apply: Callable[[PyTree, Any, jax.Array], jax.Array]
    restrict_updates: Callable[[PyTree, Any], PyTree]
    project: Callable[[PyTree], PyTree]
    num_losses: int
    name: str
    per_example: bool = False
    batch_metrics: Callable[[Any], dict[str, jax.Array]] | None = None
    check_batch: Callable[[Any], None] | None = None


def paper_init_weights(num_losses: int, aux: float = 0.9) -> tuple[float, ...]:
    """The authors' initial weights: auxiliary columns ``aux``, column 0 ``1 - aux``.

    Column 0 is the loss to the (possibly noisy) label; columns ``1..K-1`` are auxiliary
    losses (teachers, rules). With ``K = 1`` the single column starts at 1.

    Example:
        >>> paper_init_weights(3)
        (0.09999999999999998, 0.9, 0.9)
    """
    _check_positive_int("num_losses", num_losses)
    if num_losses == 1:
        return (1.0,)
    return (1.0 - aux,) + (aux,) * (num_losses - 1)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def _check_constraint(constraint: str, clamp: tuple[float, float]) -> tuple[float, float]:
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}; got {constraint!r}.")
    lo, hi = (float(c) for c in clamp)
    if not 0.0 <= lo < hi:
        raise ValueError(f"clamp must be (low, high) with 0 <= low < high; got {clamp!r}.")
    return lo, hi


def _inverse_softplus(y: np.ndarray) -> np.ndarray:
    return np.where(y > 30.0, y, np.log(np.expm1(np.maximum(y, 1e-30))))


def _softplus_bounds(lo: float, hi: float, dtype: Any) -> tuple[float, float]:
    """Pre-activation bounds ``(z_lo, z_hi)`` with ``softplus(z)`` inside ``[lo, hi]``."""
    z_hi = float(_inverse_softplus(np.float64(hi)))
    z_lo = float(_inverse_softplus(np.float64(lo))) if lo > 0 else -np.inf
    return float(np.asarray(z_lo, dtype)), float(np.asarray(z_hi, dtype))


def _bounded_softplus(z: jax.Array, lo: float, hi: float) -> jax.Array:
    # The projection keeps z inside the bounds; the clip removes a last rounding excess
    # (softplus of the bound can round past it). The clip is straight-through: a weight on
    # its bound keeps its gradient and can leave the bound again.
    weights = jax.nn.softplus(z)
    return weights + jax.lax.stop_gradient(jnp.clip(weights, lo, hi) - weights)


def check_ids(ids: Any, num_examples: int, *, allow_duplicates: bool = True) -> None:
    """Host-side check of example ids: raises ``ValueError`` naming any id outside ``[0, N)``.

    Inside a jitted step such ids cannot raise; there the table gives their rows weight 0,
    writes nothing for them and counts them in the metric ``invalid_ids``. Call this on
    the host (on each batch, or once on the whole id array) to fail early instead. It also
    catches int64 ids beyond the int32 range, which JAX (without x64) truncates to int32 when
    they enter a jitted step, where they would then read another example's row.

    Args:
        ids: ``[B]`` integer example ids (any array-like).
        num_examples: ``N``, the table's number of rows.
        allow_duplicates: if False, an id that occurs twice is an error too (in a step, a
            row repeated ``k`` times in one batch gets the sum of ``k`` hypergradients).

    Example:
        >>> check_ids([0, 3, 9], 10)
        >>> check_ids([0, 12, -1], 10)
        Traceback (most recent call last):
        ...
        ValueError: 2 example ids are outside [0, 10): 12 (position 1), -1 (position 2).
    """
    _check_positive_int("num_examples", num_examples)
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"example ids must be a [B] integer array; got shape {ids.shape} and dtype {ids.dtype}."
        )
    bad = np.flatnonzero((ids < 0) | (ids >= num_examples))
    if bad.size:
        listed = ", ".join(f"{ids[i]} (position {i})" for i in bad[:10])
        more = f", and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(
            f"{bad.size} example id{'s are' if bad.size > 1 else ' is'} outside "
            f"[0, {num_examples}): {listed}{more}."
        )
    if not allow_duplicates:
        values, counts = np.unique(ids, return_counts=True)
        repeated = values[counts > 1]
        if repeated.size:
            listed = ", ".join(str(v) for v in repeated[:10])
            raise ValueError(
                f"{repeated.size} example id{'s occur' if repeated.size > 1 else ' occurs'} "
                f"more than once in the batch: {listed}."
            )


def _check_init_in_range(values: np.ndarray, high: float, what: str) -> None:
    if np.any(values > high):
        raise ValueError(
            f"{what} initial weights go up to {values.max():g}, above the clamp's high "
            f"{high:g}; raise clamp=(low, high) or lower the initial weights."
        )


def _init_values(init: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Broadcasts a K-vector (or a full array) of initial weights to ``shape``, checked."""
    values = np.asarray(init, dtype=np.float64)
    try:
        values = np.broadcast_to(values, shape)
    except ValueError:
        raise ValueError(
            f"{what} initial weights of shape {values.shape} do not fit the mixer's shape {shape}."
        ) from None
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{what} initial weights must be finite and non-negative.")
    return values


def _ids_getter(ids: str | Callable[[Any], jax.Array]) -> Callable[[Any], jax.Array]:
    if callable(ids):
        return ids
    if not isinstance(ids, str):
        raise ValueError(f"ids must be a batch key (str) or a callable batch -> ids; got {ids!r}.")

    def get(batch):
        try:
            return batch[ids]
        except (KeyError, TypeError, IndexError):
            raise ValueError(
                f"the table mixer reads example ids from batch[{ids!r}], which this batch lacks; "
                "add the ids or pass ids=callable."
            ) from None

    return get


def _batch_ids(get_ids: Callable[[Any], jax.Array], batch: Any, what: str) -> jax.Array:
    ids = jnp.asarray(get_ids(batch))
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"{what} ids must be a [B] integer array; got shape {ids.shape} and dtype {ids.dtype}."
        )
    return ids


def _valid_rows(ids: jax.Array, num_examples: int) -> jax.Array:
    return (ids >= 0) & (ids < num_examples)


def _used_rows(ids: jax.Array, num_examples: int) -> jax.Array:
    """``[N]`` bool: the rows the batch's valid ids read (an out-of-range id is dropped)."""
    ids = jnp.where(_valid_rows(ids, num_examples), ids, num_examples)
    return jnp.zeros(num_examples, bool).at[ids].set(True, mode="drop")


def _id_metrics(ids: jax.Array, num_examples: int) -> dict[str, jax.Array]:
    valid = _valid_rows(ids, num_examples)
    # Invalid ids become distinct negatives, so they never count as duplicates.
    keyed = jnp.sort(jnp.where(valid, ids, -1 - jnp.arange(ids.shape[0], dtype=ids.dtype)))
    return {
        "invalid_ids": jnp.sum(~valid, dtype=jnp.int32),
        "duplicate_ids": jnp.sum(keyed[1:] == keyed[:-1], dtype=jnp.int32),
    }


def _id_functions(get_ids: Callable[[Any], jax.Array], num_examples: int, what: str):
    """The id plumbing of the per-example mixers: ``(batch_ids, metrics_fn, check_fn)``."""

    def batch_ids(batch):
        return _batch_ids(get_ids, batch, what)

    def metrics_fn(batch):
        return _id_metrics(batch_ids(batch), num_examples)

    def check_fn(batch):
        check_ids(np.asarray(get_ids(batch)), num_examples)

    return batch_ids, metrics_fn, check_fn


def table(
    num_examples: int,
    num_losses: int,
    *,
    init: Any = None,
    constraint: str = "clamp",
    clamp: tuple[float, float] = PAPER_CLAMP,
    ids: str | Callable[[Any], jax.Array] = "id",
    dtype: Any = jnp.float32,
) -> Mixer:
    """A per-instance, per-loss weight table ``[N, K]`` indexed by example ids.

    ``constraint="clamp"`` (the paper's): the params are the weights themselves, clamped to
    ``clamp`` after every meta update. ``constraint="softplus"``: the params are
    pre-activations ``z`` and the weights ``softplus(z)`` (smooth); ``z`` is projected after
    every meta update so that the weights stay inside ``clamp`` too. Either way every weight
    stays inside ``clamp`` whatever the meta learning rate.

    Meta updates write only the rows of the ids in the batch; every other row is left
    exactly as it was (a stateful meta-optimizer still advances its own state for them as
    for a zero gradient). An id that occurs several times in one batch reads the same row
    each time, and that row's meta gradient is the sum of the hypergradients of all its
    occurrences (the derivative of the weights with respect to the shared row).

    Ids outside ``[0, N)`` (a negative id, or ``N`` and above) cannot raise inside a jitted
    step; their rows get weight 0 in every column (so they neither train the model nor
    write to the table), and the step counts them in its metric ``invalid_ids``. Use
    :func:`check_ids` (or ``mixer.check_batch(batch)``) on the host to fail early instead.
    Without ``jax_enable_x64``, JAX truncates int64 ids to int32 when they enter a jitted
    step, so an id beyond the int32 range arrives as a valid-looking one: keep ids in int32
    (any realistic ``N`` fits), or check them on the host.

    Args:
        num_examples: ``N``, the number of training examples; ids lie in ``[0, N)``.
        num_losses: ``K``.
        init: initial weights: a ``K``-vector or an ``[N, K]`` array; default
            :func:`paper_init_weights` (column 0 at 0.1, the others at 0.9). Values above the
            clamp's high are an error; values in ``[0, low)`` start at ``low``.
        constraint: ``"clamp"`` or ``"softplus"``.
        clamp: ``(low, high)``, the range of the weights (for both constraints); default
            the paper's ``(1e-7, 2 - 1e-7)``.
        ids: the batch key holding the ``[B]`` integer example ids in ``[0, N)``, or a
            callable ``batch -> ids``. An id outside that range gets weight 0 (and no
            update), never another example's row.
        dtype: dtype of the table.

    Returns:
        A :class:`Mixer`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mixer = table(10, 2)
        >>> params = mixer.init(jax.random.key(0))
        >>> weights = mixer.apply(params, {"id": jnp.array([3, 7])}, jnp.zeros((2, 2)))
        >>> [[round(float(v), 3) for v in row] for row in weights]
        [[0.1, 0.9], [0.1, 0.9]]
    """
    _check_positive_int("num_examples", num_examples)
    _check_positive_int("num_losses", num_losses)
    lo, hi = _check_constraint(constraint, clamp)
    get_ids = _ids_getter(ids)
    values = _init_values(
        paper_init_weights(num_losses) if init is None else init,
        (num_examples, num_losses),
        "table",
    )
    _check_init_in_range(values, hi, "table")
    if constraint == "clamp":
        values = np.clip(values, lo, hi)
    else:
        z_lo, z_hi = _softplus_bounds(lo, hi, dtype)
        values = np.clip(_inverse_softplus(values), z_lo, z_hi)
    values = values.astype(dtype)

    batch_ids, metrics_fn, check_fn = _id_functions(get_ids, num_examples, "table")

    def init_fn(key):
        del key
        return jnp.asarray(values)

    def apply_fn(params, batch, losses):
        ids = batch_ids(batch)
        if ids.shape[0] != losses.shape[0]:
            raise ValueError(
                f"the table's example ids have length {ids.shape[0]} but the batch has "
                f"{losses.shape[0]} rows (loss matrix {losses.shape}); ids must be [B], one "
                "per example."
            )
        if params.shape[1] != losses.shape[1]:
            raise ValueError(
                f"the table has {params.shape[1]} loss columns but loss_fn returned "
                f"{losses.shape[1]} (loss matrix {losses.shape})."
            )
        # An id outside [0, N) reads row 0 and is then given weight 0: JAX's gather would
        # otherwise clamp it to a neighbour's row, and a NaN fill would poison the batch.
        valid = _valid_rows(ids, num_examples)
        rows = params[jnp.where(valid, ids, 0)]
        if constraint == "softplus":
            rows = _bounded_softplus(rows, lo, hi)
        return jnp.where(valid[:, None], rows, jnp.zeros_like(rows))

    def restrict_fn(updates, batch):
        used = _used_rows(batch_ids(batch), updates.shape[0])
        return jnp.where(used[:, None], updates, jnp.zeros_like(updates))

    def project_fn(params):
        if constraint == "clamp":
            return jnp.clip(params, lo, hi)
        return jnp.clip(params, z_lo, z_hi)

    return Mixer(
        init_fn,
        apply_fn,
        restrict_fn,
        project_fn,
        num_losses,
        f"table[{constraint}]",
        per_example=True,
        batch_metrics=metrics_fn,
        check_batch=check_fn,
    )


def global_weights(
    num_losses: int,
    *,
    init: Any = None,
    constraint: str = "clamp",
    clamp: tuple[float, float] = PAPER_CLAMP,
    dtype: Any = jnp.float32,
) -> Mixer:
    """``K`` scalar weights shared by every example: the learned version of a global ``alpha``.

    Args:
        num_losses: ``K``.
        init: a ``K``-vector of initial weights; default :func:`paper_init_weights`.
        constraint: ``"clamp"`` (params are the weights, clamped) or ``"softplus"`` (params
            are pre-activations, projected so that the weights stay inside ``clamp``).
        clamp: ``(low, high)``, the range of the weights.
        dtype: dtype of the params.

    Returns:
        A :class:`Mixer` with ``[K]`` params.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mixer = global_weights(2, init=(0.5, 0.5))
        >>> mixer.apply(mixer.init(jax.random.key(0)), None, jnp.zeros((3, 2))).shape
        (3, 2)
    """
    _check_positive_int("num_losses", num_losses)
    lo, hi = _check_constraint(constraint, clamp)
    values = _init_values(
        paper_init_weights(num_losses) if init is None else init, (num_losses,), "global"
    )
    _check_init_in_range(values, hi, "global")
    if constraint == "clamp":
        values = np.clip(values, lo, hi)
    else:
        z_lo, z_hi = _softplus_bounds(lo, hi, dtype)
        values = np.clip(_inverse_softplus(values), z_lo, z_hi)
    values = values.astype(dtype)

    def init_fn(key):
        del key
        return jnp.asarray(values)

    def apply_fn(params, batch, losses):
        del batch
        if losses.shape[1] != params.shape[0]:
            raise ValueError(
                f"the global mixer has {params.shape[0]} weights but loss_fn returned "
                f"{losses.shape[1]} loss columns (loss matrix {losses.shape})."
            )
        weights = params if constraint == "clamp" else _bounded_softplus(params, lo, hi)
        return jnp.broadcast_to(weights, losses.shape)

    def restrict_fn(updates, batch):
        del batch
        return updates

    def project_fn(params):
        if constraint == "clamp":
            return jnp.clip(params, lo, hi)
        return jnp.clip(params, z_lo, z_hi)

    return Mixer(init_fn, apply_fn, restrict_fn, project_fn, num_losses, f"global[{constraint}]")


class MixingMLP(nn.Module):
    """Per-example features ``[B, F]`` -> ``K`` non-negative weights ``[B, K]``.

    The last layer starts with small weights and a bias at the inverse activation of
    ``init_weights``, so the initial mix is ``init_weights`` for every example.
    """

    hidden: Sequence[int]
    init_weights: Sequence[float]
    activation: str = "softplus"
    max_weight: float = 2.0

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = features
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        target = np.asarray(self.init_weights, np.float64)
        if self.activation == "softplus":
            bias = _inverse_softplus(target)
        else:
            p = np.clip(target / self.max_weight, 1e-6, 1 - 1e-6)
            bias = np.log(p) - np.log1p(-p)
        z = nn.Dense(
            len(self.init_weights),
            kernel_init=nn.initializers.normal(1e-2),
            bias_init=lambda *_: jnp.asarray(bias, features.dtype),
        )(x)
        if self.activation == "softplus":
            return jax.nn.softplus(z)
        return self.max_weight * jax.nn.sigmoid(z)


def network(
    num_losses: int,
    *,
    hidden: Sequence[int] = (32,),
    features: Callable[[Any, jax.Array], jax.Array] | None = None,
    num_features: int | None = None,
    init: Any = None,
    activation: str = "softplus",
    max_weight: float = 2.0,
    dtype: Any = jnp.float32,
) -> Mixer:
    """A mixing network: a small MLP from per-example features to ``K`` weights.

    By default the features are the batch's detached per-example losses ``[B, K]`` (as in
    Meta-Weight-Net, one network for all K columns); pass ``features(batch, losses) ->
    [B, F]`` with ``num_features=F`` for anything else (teacher confidence, LF votes, ...).

    Args:
        num_losses: ``K``.
        hidden: hidden layer widths.
        features: optional ``(batch, losses [B, K]) -> [B, F]``.
        num_features: ``F``; required with ``features``.
        init: ``K``-vector the network outputs at initialisation; default
            :func:`paper_init_weights`.
        activation: ``"softplus"`` (weights in ``(0, inf)``: unbounded, so a large meta
            learning rate can drive them high) or ``"sigmoid"`` (weights in
            ``(0, max_weight)``).
        max_weight: upper bound for ``"sigmoid"``.
        dtype: dtype of the features fed to the network.

    Returns:
        A :class:`Mixer` whose params are the Flax MLP's variables.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mixer = network(2, hidden=(8,))
        >>> params = mixer.init(jax.random.key(0))
        >>> mixer.apply(params, None, jnp.ones((4, 2))).shape
        (4, 2)
    """
    _check_positive_int("num_losses", num_losses)
    if activation not in ("softplus", "sigmoid"):
        raise ValueError(f"activation must be 'softplus' or 'sigmoid'; got {activation!r}.")
    for width in hidden:
        _check_positive_int("hidden width", width)
    if features is not None:
        if not callable(features):
            raise ValueError("features must be a callable (batch, losses) -> [B, F].")
        if num_features is None:
            raise ValueError("network(features=...) needs num_features, the F of its [B, F].")
        _check_positive_int("num_features", num_features)
    elif num_features not in (None, num_losses):
        raise ValueError(
            f"without features, the network reads the {num_losses} losses; num_features "
            f"{num_features} does not match."
        )
    in_features = num_losses if features is None else num_features
    init_weights = _init_values(
        paper_init_weights(num_losses) if init is None else init, (num_losses,), "network"
    )
    if activation == "sigmoid" and np.any(init_weights >= max_weight):
        raise ValueError(f"sigmoid network init weights must lie below max_weight={max_weight}.")
    module = MixingMLP(
        hidden=tuple(hidden),
        init_weights=tuple(float(v) for v in init_weights),
        activation=activation,
        max_weight=float(max_weight),
    )

    def feats(batch, losses):
        if losses.shape[1] != num_losses:
            raise ValueError(
                f"the mixing network was built for {num_losses} loss columns but loss_fn "
                f"returned {losses.shape[1]} (loss matrix {losses.shape})."
            )
        x = losses if features is None else features(batch, losses)
        x = jnp.asarray(x, dtype)
        if x.ndim != 2 or x.shape[1] != in_features:
            raise ValueError(
                f"mixing network features must be [B, {in_features}]; got shape {x.shape}."
            )
        return x

    def init_fn(key):
        return module.init(key, jnp.zeros((1, in_features), dtype))

    def apply_fn(params, batch, losses):
        weights = module.apply(params, feats(batch, losses))
        return weights.astype(losses.dtype)

    def restrict_fn(updates, batch):
        del batch
        return updates

    def project_fn(params):
        return params

    return Mixer(init_fn, apply_fn, restrict_fn, project_fn, num_losses, "network")


def trust_table(
    num_examples: int,
    num_losses: int,
    *,
    trust_init: Any = 1.0,
    table_init: Any = 1.0,
    fixed: Sequence[int] = (),
    trust_clamp: tuple[float, float] = (0.0, 2.0),
    table_clamp: tuple[float, float] = (0.0, 2.0),
    active: Callable[[Any, jax.Array], jax.Array] | None = None,
    ids: str | Callable[[Any], jax.Array] = "id",
    dtype: Any = jnp.float32,
) -> Mixer:
    """A trust per loss column times a per-example correction: ``w_ik = t_k * c_ik``.

    The column trust ``t_k`` (one per rule, per teacher, per label source) is shared by every
    example, so a column that is active in only a few rows of each batch still gets a
    well-estimated weight; the table ``c_ik`` (starting at 1) corrects it per example, like
    :func:`table`. The meta gradient of ``t_k`` is the **mean** of ``G_ik c_ik`` over the
    batch rows where column ``k`` is active (not the sum over the batch), so each meta step
    moves a trust by about as much as one table entry moves, however rarely its column
    fires: a rule active in 2 of 64 rows learns its trust as fast as one active in all 64.

    Columns listed in ``fixed`` keep the weight ``trust_init[k]`` on every row and are never
    updated: use it for a loss whose weight is not in question, such as cross-entropy on
    clean rows mixed into the training batch (see :mod:`amal_jax.clean`). With every other
    column's trust at 0 the mixed loss is the fixed columns' loss alone.

    Args:
        num_examples: ``N``; ids lie in ``[0, N)`` (ids outside get weight 0, as for
            :func:`table`).
        num_losses: ``K``.
        trust_init: a ``K``-vector (or scalar) of initial trusts.
        table_init: a ``K``-vector, an ``[N, K]`` array or a scalar; default 1.
        fixed: indices of the columns whose weight is fixed at ``trust_init``.
        trust_clamp: ``(low, high)`` range of the trusts.
        table_clamp: ``(low, high)`` range of the per-example corrections.
        active: optional ``(batch, losses [B, K]) -> [B, K]`` bool, the rows where each
            column applies; default: where the (detached) loss is non-zero, since a masked
            loss column is exactly zero (and so has a zero hypergradient).
        ids: the batch key holding the ``[B]`` example ids, or a callable ``batch -> ids``.
        dtype: dtype of the params.

    Returns:
        A :class:`Mixer` with params ``{"trust": [K], "table": [N, K]}``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> mixer = trust_table(10, 3, trust_init=(1.0, 0.1, 0.1), fixed=(0,))
        >>> params = mixer.init(jax.random.key(0))
        >>> w = mixer.apply(params, {"id": jnp.array([3, 7])}, jnp.ones((2, 3)))
        >>> [[round(float(v), 3) for v in row] for row in w]
        [[1.0, 0.1, 0.1], [1.0, 0.1, 0.1]]
    """
    _check_positive_int("num_examples", num_examples)
    _check_positive_int("num_losses", num_losses)
    t_lo, t_hi = _check_constraint("clamp", trust_clamp)
    c_lo, c_hi = _check_constraint("clamp", table_clamp)
    get_ids = _ids_getter(ids)
    trust_values = _init_values(trust_init, (num_losses,), "trust_table trust")
    table_values = _init_values(table_init, (num_examples, num_losses), "trust_table table")
    _check_init_in_range(trust_values, t_hi, "trust_table trust")
    _check_init_in_range(table_values, c_hi, "trust_table table")
    fixed = tuple(int(k) for k in fixed)
    if any(not 0 <= k < num_losses for k in fixed) or len(set(fixed)) != len(fixed):
        raise ValueError(
            f"fixed must list distinct column indices in [0, {num_losses}); got {fixed}."
        )
    if active is not None and not callable(active):
        raise ValueError("active must be a callable (batch, losses) -> [B, K] bool, or None.")
    learned = np.ones(num_losses, bool)
    learned[list(fixed)] = False
    learned_j = jnp.asarray(learned)
    trust_values = np.clip(trust_values, t_lo, t_hi).astype(dtype)
    fixed_weights = jnp.asarray(np.where(learned, 0.0, trust_values), dtype)
    table_values = np.clip(table_values, c_lo, c_hi).astype(dtype)

    batch_ids, metrics_fn, check_fn = _id_functions(get_ids, num_examples, "trust_table")

    def init_fn(key):
        del key
        return {"trust": jnp.asarray(trust_values), "table": jnp.asarray(table_values)}

    def apply_fn(params, batch, losses):
        ids = batch_ids(batch)
        trust, tab = params["trust"], params["table"]
        if ids.shape[0] != losses.shape[0] or tab.shape[1] != losses.shape[1]:
            raise ValueError(
                f"trust_table: {ids.shape[0]} ids and {tab.shape[1]} loss columns do not fit "
                f"the loss matrix {losses.shape} ([B] ids, [B, K] losses)."
            )
        valid = _valid_rows(ids, num_examples)
        rows = tab[jnp.where(valid, ids, 0)]
        if active is None:
            on = jax.lax.stop_gradient(losses) != 0
        else:
            on = jnp.asarray(active(batch, losses), bool)
            if on.shape != losses.shape:
                raise ValueError(
                    f"trust_table active(batch, losses) must be {losses.shape}; got {on.shape}."
                )
        on = on & valid[:, None]
        count = jnp.sum(on, axis=0).astype(trust.dtype)
        # The value is the trust; its gradient comes from the active rows only, divided by
        # their number (a mean, not a sum over the batch).
        scale = 1.0 / jnp.maximum(count, 1.0)
        trust_mean_grad = trust * scale + jax.lax.stop_gradient(trust * (1.0 - scale))
        row_trust = jnp.where(on, trust_mean_grad[None, :], jax.lax.stop_gradient(trust)[None, :])
        weights = row_trust * rows
        weights = jnp.where(learned_j[None, :], weights, fixed_weights[None, :])
        return jnp.where(valid[:, None], weights, jnp.zeros_like(weights)).astype(losses.dtype)

    def restrict_fn(updates, batch):
        used = _used_rows(batch_ids(batch), updates["table"].shape[0])
        tab = jnp.where(used[:, None] & learned_j[None, :], updates["table"], 0)
        trust = jnp.where(learned_j, updates["trust"], 0)
        return {"trust": trust.astype(updates["trust"].dtype), "table": tab.astype(tab.dtype)}

    def project_fn(params):
        return {
            "trust": jnp.clip(params["trust"], t_lo, t_hi),
            "table": jnp.clip(params["table"], c_lo, c_hi),
        }

    return Mixer(
        init_fn,
        apply_fn,
        restrict_fn,
        project_fn,
        num_losses,
        "trust_table",
        per_example=True,
        batch_metrics=metrics_fn,
        check_batch=check_fn,
    )
