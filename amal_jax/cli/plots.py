"""The PNG plots of an ``amal-jax`` run, drawn from the files of its output directory.

- ``learning_curves.png``: the mean training loss and validation metric per epoch, one line
  per fold's run (mean over its seeds);
- ``weight_histograms.png``: per loss column, the histogram of the learned weights over the
  rows it applies to, epoch by epoch (a column of the image per epoch, darker = more rows);
  at most :data:`MAX_COLUMNS` columns, those applying to the most rows;
- ``weight_vs_teacher_confidence.png`` (distillation): each training row's learned weight
  on a teacher's column against that teacher's confidence (its top class probability);
- ``trust_vs_accuracy.png`` (rules): each rule's learned weight against its accuracy on the
  validation split (marker area ~ coverage).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

MAX_COLUMNS = 12


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - the cli extra installs it
        raise SystemExit(
            f"amal-jax plots need matplotlib: pip install 'amal_jax[cli]', or --no-plots ({err})."
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(lines: Sequence[dict], metric: str, path: pathlib.Path) -> pathlib.Path:
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.5))
    for run in sorted({line["run"] for line in lines}):
        mine = sorted((ln for ln in lines if ln["run"] == run), key=lambda ln: ln["epoch"])
        epochs = [ln["epoch"] for ln in mine]
        seeds = ",".join(map(str, mine[0]["seeds"]))
        label = f"fold {run} (seeds {seeds})"
        ax_loss.plot(epochs, [np.mean(ln["train_loss"]) for ln in mine], marker=".", label=label)
        ax_val.plot(epochs, [np.mean(ln[f"valid_{metric}"]) for ln in mine], marker=".")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mixed training loss")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel(f"validation {metric} (selection fold)")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def weight_histograms(lines: Sequence[dict], path: pathlib.Path) -> pathlib.Path | None:
    """None when the method keeps no per-row weights (no ``weights`` in the lines)."""
    run = min(line["run"] for line in lines)
    mine = sorted((ln for ln in lines if ln["run"] == run), key=lambda ln: ln["epoch"])
    columns = [
        (name, col["weights"]["rows"])
        for name, col in mine[0]["columns"].items()
        if col.get("weights", {}).get("rows", 0) > 0
    ]
    if not columns:
        return None
    shown = {name for name, _ in sorted(columns, key=lambda c: -c[1])[:MAX_COLUMNS]}
    order = [name for name, _ in columns if name in shown]
    count = dict(columns)
    plt = _pyplot()
    cols = min(4, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), order, strict=False):
        for ln in mine:
            hist = ln["columns"][name]["weights"]["histogram"]
            counts = np.asarray(hist["counts"], float)
            share = counts / max(counts.sum(), 1.0)
            e = ln["epoch"]
            ax.pcolormesh(
                [e - 0.5, e + 0.5], hist["edges"], share[:, None], cmap="Greys", vmin=0, vmax=0.5
            )
        ax.set_title(f"{name} ({count[name]} rows)", fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("weight", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(order) :]:
        ax.axis("off")
    seeds = ",".join(map(str, mine[0]["seeds"]))
    more = f"; {len(order)} of {len(columns)} columns" if len(order) < len(columns) else ""
    fig.suptitle(f"learned weights per loss column, fold {run} (seeds {seeds}){more}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def weight_vs_confidence(
    weights: np.ndarray, confidence: np.ndarray, teacher: str, path: pathlib.Path
) -> pathlib.Path:
    """``weights`` and ``confidence``: ``[n]`` (the rows a teacher's column applies to)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.hexbin(confidence, weights, gridsize=30, mincnt=1, cmap="viridis", bins="log")
    ax.set_xlabel(f"teacher {teacher}: top class probability")
    ax.set_ylabel(f"learned weight of column {teacher}")
    ax.set_title("distillation weight against the teacher's confidence", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trust_vs_accuracy(rows: Sequence[dict], path: pathlib.Path) -> pathlib.Path:
    """``rows``: the ``lf_trust.csv`` records (``learned_weight``, ``valid_accuracy``,
    ``train_coverage``)."""
    plt = _pyplot()
    acc = np.array([np.nan if r["valid_accuracy"] is None else r["valid_accuracy"] for r in rows])
    weight = np.array(
        [np.nan if r["learned_weight"] is None else r["learned_weight"] for r in rows]
    )
    cov = np.array([r["train_coverage"] for r in rows])
    seen = ~np.isnan(acc) & ~np.isnan(weight)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(acc[seen], weight[seen], s=20 + 2000 * cov[seen], alpha=0.6)
    ax.set_xlabel("rule accuracy on the validation split")
    ax.set_ylabel("learned weight")
    ax.set_title(
        f"{seen.sum()} of {len(rows)} rules fire on validation rows and have a weight\n"
        "(marker area ~ coverage of the training rows)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
