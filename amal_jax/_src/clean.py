"""Fold roles and mixed batches for clean rows used both ways (see :mod:`amal_jax.clean`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["SCHEMES", "FoldRoles", "clean_rows_per_batch", "cross_fit", "mixed_batch_indices"]

#: The fold schemes of :func:`cross_fit`.
SCHEMES = ("shared", "rotate")


class FoldRoles(NamedTuple):
    """The roles of the clean rows in one cross-fitting fold (sorted index arrays).

    Fields:
        train: ``[n_train]`` int, clean rows trained on (their own loss column).
        meta: ``[n_meta]`` int, clean rows whose validation loss gives the hypergradients.
        select: ``[n_select]`` int, clean rows for model selection only (disjoint from both).
    """

    train: np.ndarray
    meta: np.ndarray
    select: np.ndarray


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def cross_fit(
    num_clean: int, num_folds: int = 3, *, scheme: str = "shared", seed: int = 0
) -> tuple[FoldRoles, ...]:
    """Splits ``num_clean`` clean rows into ``num_folds`` folds and gives each fold its roles.

    Fold ``i`` always selects on part ``i``. With ``scheme="shared"`` it trains on every
    other part and takes its hypergradients from the same rows; with ``scheme="rotate"`` part
    ``i + 1`` feeds the hypergradients and the remaining parts are trained on (with three
    folds: one part each). Every clean row selects in exactly one fold.

    Args:
        num_clean: number of clean rows (at least ``num_folds``).
        num_folds: at least 2 (``"shared"``) or 3 (``"rotate"``).
        scheme: one of :data:`SCHEMES`.
        seed: seed of the random split.

    Returns:
        ``num_folds`` :class:`FoldRoles`.

    Example:
        >>> folds = cross_fit(9, 3, scheme="rotate")
        >>> [len(f.train) + len(f.meta) + len(f.select) for f in folds]
        [9, 9, 9]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}; got {scheme!r}.")
    num_folds = _check_int("num_folds", num_folds, 2 if scheme == "shared" else 3)
    num_clean = _check_int("num_clean", num_clean, num_folds)
    order = np.random.default_rng(_check_int("seed", seed, 0)).permutation(num_clean)
    parts = [np.sort(p) for p in np.array_split(order, num_folds)]
    folds = []
    for i in range(num_folds):
        if scheme == "shared":
            rest = np.sort(np.concatenate([parts[j] for j in range(num_folds) if j != i]))
            folds.append(FoldRoles(train=rest, meta=rest, select=parts[i]))
        else:
            meta = (i + 1) % num_folds
            train = [parts[j] for j in range(num_folds) if j not in (i, meta)]
            folds.append(
                FoldRoles(train=np.sort(np.concatenate(train)), meta=parts[meta], select=parts[i])
            )
    return tuple(folds)


def clean_rows_per_batch(batch_size: int, clean_share: float) -> int:
    """The number of clean rows in a batch of ``batch_size``: ``round(share * B)``.

    At least one when ``clean_share > 0`` and at most ``batch_size - 1`` when
    ``clean_share < 1``, so neither kind of row is left out by rounding.

    Example:
        >>> clean_rows_per_batch(64, 0.5), clean_rows_per_batch(64, 0.001)
        (32, 1)
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    share = float(clean_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"clean_share must lie in [0, 1]; got {clean_share!r}.")
    count = round(share * batch_size)
    if 0.0 < share:
        count = max(count, 1)
    if share < 1.0:
        count = min(count, batch_size - 1)
    return count


def _passes(rng: np.random.Generator, n: int, total: int) -> np.ndarray:
    """``total`` indices from reshuffled passes over ``range(n)``."""
    reps = -(-total // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:total]


def mixed_batch_indices(
    rng: np.random.Generator,
    num_rows: int,
    num_clean: int,
    *,
    batch_size: int,
    clean_share: float = 0.5,
    steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``steps`` training batches, each with a fixed share of clean rows.

    Each batch holds ``c = clean_rows_per_batch(batch_size, clean_share)`` clean rows and
    ``batch_size - c`` other (weak) rows. Both kinds are drawn without replacement from
    reshuffled passes, so every row is seen equally often (the clean rows, being fewer,
    are revisited more often).

    Args:
        rng: a numpy ``Generator`` (advanced in place).
        num_rows: number of weak rows.
        num_clean: number of clean training rows.
        batch_size: rows per batch, ``B``.
        clean_share: share of clean rows per batch, in ``[0, 1]``.
        steps: number of batches; default one pass over the weak rows
            (``ceil(num_rows / (B - c))``).

    Returns:
        ``(weak [steps, B - c], clean [steps, c])`` int64 indices into the weak rows and
        the clean training rows.

    Example:
        >>> weak, clean = mixed_batch_indices(
        ...     np.random.default_rng(0), 100, 10, batch_size=8, clean_share=0.25)
        >>> weak.shape, clean.shape
        ((17, 6), (17, 2))
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}.")
    c = clean_rows_per_batch(batch_size, clean_share)
    w = batch_size - c
    num_rows = _check_int("num_rows", num_rows, 1 if w else 0)
    num_clean = _check_int("num_clean", num_clean, 1 if c else 0)
    if steps is None:
        steps = -(-num_rows // w) if w else -(-num_clean // c)
    steps = _check_int("steps", steps, 1)
    weak = _passes(rng, num_rows, steps * w).reshape(steps, w) if w else np.zeros((steps, 0), int)
    clean = _passes(rng, num_clean, steps * c).reshape(steps, c) if c else np.zeros((steps, 0), int)
    return weak.astype(np.int64), clean.astype(np.int64)
