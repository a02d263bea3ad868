"""Host-side checks of concrete batches, before they reach a jitted step."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from amal_jax._src.checks import check_batch_not_empty
from amal_jax._src.methods import engine_of
from amal_jax._src.state import AmalState

__all__ = ["check_batch"]


def check_batch(
    config: Any,
    train_batch: Any,
    val_batch: Any = None,
    *,
    labels: dict[str, int] | None = None,
) -> None:
    """Host-side checks of a batch: raises ``ValueError`` naming what is wrong.

    Inside a jitted step nothing can raise on values: there a bad id gets weight 0, a label
    outside ``[0, C)`` gets loss 0 in :func:`amal_jax.cross_entropy`, and a non-finite update
    is discarded (ids and skips are counted in the metrics). Call this on the host, on
    concrete batches, to fail early instead. It checks that no batch is empty, that every
    floating-point leaf is finite (naming the leaf and the first bad entry), the mixer's own
    requirements (the table: every id inside ``[0, N)``) and, with ``labels``, the labels.

    Args:
        config: a method's configuration (an :class:`AmalConfig`, a
            :class:`~amal_jax.baselines.ReweightConfig`) or an :class:`AmalState`.
        train_batch: a training batch.
        val_batch: optionally, a validation batch.
        labels: optionally ``{batch key: C}``, the keys holding integer class labels and
            their number of classes. A training label must be in ``[0, C)`` or negative (the
            abstain convention); a validation label must be in ``[0, C)`` (an abstain there
            would silently count as loss 0 in the validation mean).

    Example:
        >>> import jax.numpy as jnp, optax, amal_jax
        >>> cfg = amal_jax.AmalConfig(lambda p, b: b["x"], lambda p, b: 0.0, optax.sgd(0.1),
        ...                           amal_jax.table(4, 1), optax.sgd(1.0))
        >>> amal_jax.check_batch(cfg, {"x": jnp.ones((2, 1)), "id": jnp.array([0, 3])})
        >>> amal_jax.check_batch(cfg, {"x": jnp.ones((2, 1)), "id": jnp.array([0, 4])})
        Traceback (most recent call last):
        ...
        ValueError: training batch: 1 example id is outside [0, 4): 4 (position 1).
    """
    if isinstance(config, AmalState):
        config = config.config
    engine_of(config, "check_batch")  # a method's configuration, or a clear error
    batches = [("training", train_batch)] + (
        [("validation", val_batch)] if val_batch is not None else []
    )
    for what, batch in batches:
        check_batch_not_empty(batch, what)
        for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
            values = np.asarray(leaf)
            if not np.issubdtype(values.dtype, np.inexact) or np.all(np.isfinite(values)):
                continue
            bad = np.argwhere(~np.isfinite(values))[0]
            raise ValueError(
                f"{what} batch: leaf {jax.tree_util.keystr(path) or '(root)'} has a non-finite "
                f"value {values[tuple(bad)]} at index {tuple(int(i) for i in bad)}."
            )
    for key, num_classes in (labels or {}).items():
        for what, batch, low in (("training", train_batch, None), ("validation", val_batch, 0)):
            if batch is None:
                continue
            if key not in batch:
                raise ValueError(f"{what} batch has no labels under {key!r}.")
            values = np.asarray(batch[key])
            bad = values >= num_classes if low is None else (values < low) | (values >= num_classes)
            if np.any(bad):
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                allowed = f"[0, {num_classes})" + (" or negative (abstain)" if low is None else "")
                raise ValueError(
                    f"{what} batch: label {batch[key][index]} at {key}{list(index)} is not "
                    f"{allowed}."
                )
    mixer = getattr(config, "mixer", None)
    if mixer is not None and mixer.check_batch is not None:
        try:
            mixer.check_batch(train_batch)
        except ValueError as error:
            raise ValueError(f"training batch: {error}") from None
