"""Labelling-function analysis, like Snorkel's ``LFAnalysis.lf_summary``.

For a vote matrix ``L`` (``[n, m]``, ``-1`` = abstain) and, optionally, gold labels ``y``:

- coverage: the fraction of rows where the LF votes;
- overlaps: the fraction of rows where it votes and at least one other LF votes;
- conflicts: the fraction of rows where it votes and another LF votes a different class;
- polarity: the classes it emits;
- correct / incorrect / accuracy: on the rows where it votes and the gold label is known;
- learned accuracy: a label model's estimate, given as ``learned_accuracy`` (e.g.
  :attr:`~amal_jax.weak.LabelModel.accuracies_` of a model fitted on the training votes),
  to read beside the empirical one.

Example::

    summary = lf_summary(ds.valid.L, ds.valid.y, lf_names=ds.lf_names,
                         class_names=ds.class_names)
    print(format_lf_summary(summary))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from amal_jax.weak.label_models import check_gold, check_votes

__all__ = ["LFSummary", "format_lf_summary", "lf_summary"]


@dataclasses.dataclass(frozen=True, eq=False)
class LFSummary:
    """Per-LF statistics of a vote matrix; see :func:`lf_summary`.

    Fields:
        lf_names: ``m`` names.
        class_names: ``C`` class names (``"0" .. "C-1"`` when none were given).
        num_rows: ``n``.
        coverage, overlaps, conflicts: ``[m]`` float64 fractions of all ``n`` rows.
        polarity: ``m`` sorted tuples of the classes each LF emits.
        correct, incorrect: ``[m]`` int64 counts of votes equal / unequal to the gold label
            (rows with unknown gold, ``y = -1``, excluded); ``None`` without gold labels.
        accuracy: ``[m]`` float64 ``correct / (correct + incorrect)``, NaN for an LF that
            never votes on a row with a gold label; ``None`` without gold labels.
        total_coverage: the fraction of rows where at least one LF votes.
        learned_accuracy: ``[m]`` float64 a label model's per-LF accuracies, or ``None``.
    """

    lf_names: tuple[str, ...]
    class_names: tuple[str, ...]
    num_rows: int
    coverage: np.ndarray
    overlaps: np.ndarray
    conflicts: np.ndarray
    polarity: tuple[tuple[int, ...], ...]
    correct: np.ndarray | None
    incorrect: np.ndarray | None
    accuracy: np.ndarray | None
    total_coverage: float
    learned_accuracy: np.ndarray | None = None

    def records(self) -> list[dict[str, Any]]:
        """One dict per LF (name, polarity, coverage, ..., accuracy), e.g. for a DataFrame.

        Example:
            >>> lf_summary([[0, 1], [0, -1]]).records()[0]["coverage"]
            1.0
        """
        out = []
        for j, name in enumerate(self.lf_names):
            record = {
                "lf": name,
                "polarity": self.polarity[j],
                "coverage": float(self.coverage[j]),
                "overlaps": float(self.overlaps[j]),
                "conflicts": float(self.conflicts[j]),
            }
            if self.accuracy is not None:
                record["correct"] = int(self.correct[j])
                record["incorrect"] = int(self.incorrect[j])
                record["accuracy"] = float(self.accuracy[j])
            if self.learned_accuracy is not None:
                record["learned_accuracy"] = float(self.learned_accuracy[j])
            out.append(record)
        return out


def lf_summary(
    L: Any,
    y: Any = None,
    *,
    lf_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    learned_accuracy: Any = None,
) -> LFSummary:
    """Coverage, overlaps, conflicts, polarity and empirical accuracy of each LF.

    Args:
        L: ``[n, m]`` integer votes, ``-1`` = abstain.
        y: optional ``[n]`` gold labels in ``[0, C)``; ``-1`` marks a row whose gold is
            unknown (left out of the accuracy).
        lf_names: ``m`` names; default ``lf_0 .. lf_{m-1}``.
        class_names: ``C`` class names (fixes ``C``).
        num_classes: ``C`` when no ``class_names`` are given; default ``max(L, y) + 1``
            (at least 2).
        learned_accuracy: optional ``[m]`` per-LF accuracies a label model learned
            (``LabelModel(C).fit(train.L).accuracies_``), shown beside the empirical ones.

    Returns:
        An :class:`LFSummary`.

    Example:
        >>> s = lf_summary([[0, 1, -1], [0, 0, -1], [-1, -1, 1]], [0, 1, 1])
        >>> s.coverage.round(3).tolist(), s.conflicts.round(3).tolist()
        ([0.667, 0.667, 0.333], [0.333, 0.333, 0.0])
        >>> s.accuracy.tolist(), s.total_coverage
        ([0.5, 0.0, 1.0], 1.0)
    """
    L_arr = np.asarray(L)
    y_arr = None if y is None else np.asarray(y)
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} disagrees with {len(class_names)} class_names."
            )
        num_classes = len(class_names)
    elif num_classes is None:
        top = max(
            int(L_arr.max(initial=-1)) if L_arr.size else -1,
            int(y_arr.max(initial=-1)) if y_arr is not None and y_arr.size else -1,
        )
        num_classes = max(2, top + 1)
    L_arr = check_votes(L_arr, num_classes)
    n, m = L_arr.shape
    if class_names is None:
        class_names = tuple(str(c) for c in range(num_classes))
    if lf_names is None:
        lf_names = tuple(f"lf_{j}" for j in range(m))
    lf_names = tuple(str(s) for s in lf_names)
    if len(lf_names) != m:
        raise ValueError(f"lf_names has {len(lf_names)} names but L has {m} LFs.")

    votes = L_arr >= 0
    num_votes = votes.sum(axis=1)  # [n]
    per_class = np.stack([(L_arr == c).sum(axis=1) for c in range(num_classes)], axis=1)
    own = np.take_along_axis(per_class, np.maximum(L_arr, 0), axis=1)  # [n, m] agreeing votes
    denom = max(n, 1)
    coverage = votes.sum(axis=0) / denom
    overlaps = (votes & (num_votes[:, None] > 1)).sum(axis=0) / denom
    # Another LF votes a different class when the row's votes outnumber those agreeing with j.
    conflicts = (votes & (num_votes[:, None] > own)).sum(axis=0) / denom
    polarity = tuple(tuple(int(c) for c in np.unique(L_arr[votes[:, j], j])) for j in range(m))

    if learned_accuracy is not None:
        learned_accuracy = np.asarray(learned_accuracy, dtype=np.float64)
        if learned_accuracy.shape != (m,):
            raise ValueError(
                f"learned_accuracy must have one value per LF, shape ({m},); got "
                f"{learned_accuracy.shape}."
            )

    correct = incorrect = accuracy = None
    if y_arr is not None:
        y_arr = check_gold(y_arr, n, num_classes)
        known = votes & (y_arr[:, None] >= 0)
        correct = (known & (L_arr == y_arr[:, None])).sum(axis=0)
        incorrect = known.sum(axis=0) - correct
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(
                correct + incorrect > 0, correct / np.maximum(correct + incorrect, 1), np.nan
            )
    return LFSummary(
        lf_names=lf_names,
        class_names=class_names,
        num_rows=n,
        coverage=coverage,
        overlaps=overlaps,
        conflicts=conflicts,
        polarity=polarity,
        correct=correct,
        incorrect=incorrect,
        accuracy=accuracy,
        total_coverage=float(votes.any(axis=1).sum() / denom),
        learned_accuracy=learned_accuracy,
    )


def format_lf_summary(
    summary: LFSummary, *, max_rows: int | None = None, name_width: int = 40
) -> str:
    """An aligned text table of an :class:`LFSummary`, one LF a row, and the total coverage.

    Args:
        summary: from :func:`lf_summary`.
        max_rows: show only the first ``max_rows`` LFs (a last line says how many were left
            out); default all.
        name_width: longer LF names (regexes) are cut to this many characters, ending in
            ``...``.

    Returns:
        The table as one string (no trailing newline).

    Example:
        >>> s = lf_summary([[0, 1], [0, -1]], [0, 0], lf_names=["a", "b"])
        >>> print(format_lf_summary(s))
        j  LF  Polarity  Coverage  Overlaps  Conflicts  Correct  Incorrect  Emp. Acc.
        0  a   0         1.000     0.500     0.500      2        0          1.000
        1  b   1         0.500     0.500     0.500      0        1          0.000
        total coverage 1.000 of 2 rows, 2 LFs
        >>> s = lf_summary([[0, 1], [0, -1]], [0, 0], learned_accuracy=[0.9, 0.6])
        >>> print(format_lf_summary(s).splitlines()[1])
        0  lf_0  0         1.000     0.500     0.500      2        0          1.000      0.900
    """
    if name_width < 4:
        raise ValueError(f"name_width must be >= 4; got {name_width}.")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 or None; got {max_rows}.")

    def cut(name: str) -> str:
        return name if len(name) <= name_width else name[: name_width - 3] + "..."

    has_gold = summary.accuracy is not None
    learned = summary.learned_accuracy
    header = ["j", "LF", "Polarity", "Coverage", "Overlaps", "Conflicts"]
    if has_gold:
        header += ["Correct", "Incorrect", "Emp. Acc."]
    if learned is not None:
        header.append("Learned Acc.")
    m = len(summary.lf_names)
    shown = range(m if max_rows is None else min(m, max_rows))
    rows = []
    for j in shown:
        row = [
            str(j),
            cut(summary.lf_names[j]),
            ",".join(summary.class_names[c] for c in summary.polarity[j]) or "-",
            f"{summary.coverage[j]:.3f}",
            f"{summary.overlaps[j]:.3f}",
            f"{summary.conflicts[j]:.3f}",
        ]
        if has_gold:
            acc = summary.accuracy[j]
            row += [
                str(int(summary.correct[j])),
                str(int(summary.incorrect[j])),
                "-" if np.isnan(acc) else f"{acc:.3f}",
            ]
        if learned is not None:
            row.append(f"{learned[j]:.3f}")
        rows.append(row)
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    if len(shown) < m:
        lines.append(f"... {m - len(shown)} more LFs")
    lines.append(f"total coverage {summary.total_coverage:.3f} of {summary.num_rows} rows, {m} LFs")
    return "\n".join(lines)
