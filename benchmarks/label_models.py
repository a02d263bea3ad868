"""Label models side by side: label accuracy on the covered training rows, unsupervised fit.

For each data set (a bundled name or a rules / WRENCH directory) every model is fitted on the
training split's vote matrix alone (no gold label, no class balance: the unsupervised
setting), and scored on the training rows where at least one LF votes and a gold label is
known (the files' training labels, which no model sees). Columns:

- ``LabelModel``: :class:`amal_jax.weak.LabelModel` with its defaults;
- ``DawidSkene``: :class:`amal_jax.weak.DawidSkene` with its defaults;
- ``Snorkel``: Snorkel's ``LabelModel`` (default settings, ``n_epochs=500``, ``seed=0``),
  where ``snorkel`` is importable (it is not a dependency of amal_jax); skipped with a note
  otherwise;
- ``majority vote``: on the rows whose top classes do not tie (the share of covered rows
  they are in brackets), and with the lowest-class tie-break on all covered rows.

Macro-F1 of the same hard labels is reported beside accuracy. Writes
``label_models.json`` and ``label_models.md`` to ``--out``.

    python -m benchmarks.label_models --datasets sms,youtube,semeval --out results/label_models
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import numpy as np

from amal_jax.weak import DawidSkene, LabelModel, load_weak_dataset, majority_vote

DATASETS = ("sms", "youtube", "semeval")
SNORKEL_EPOCHS = 500


def macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Macro-F1 over the classes present in ``y`` or ``pred`` (a ``-1`` prediction is wrong)."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (y == c))
        fp, fn = np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def snorkel_predict(L: np.ndarray, num_classes: int):
    """Snorkel's LabelModel predictions on ``L``, or None when snorkel is not importable."""
    try:
        from snorkel.labeling.model import LabelModel as SnorkelLabelModel
    except ImportError:
        return None
    model = SnorkelLabelModel(cardinality=num_classes, verbose=False)
    model.fit(L, n_epochs=SNORKEL_EPOCHS, seed=0, progress_bar=False)
    # Snorkel's default tie_break_policy ("abstain") would give -1; take the argmax.
    return np.asarray(model.predict_proba(L)).argmax(axis=1)


def evaluate(name: str, with_snorkel: bool = True) -> dict:
    """One data set's row: every model's accuracy and macro-F1 on the scored rows."""
    ds = load_weak_dataset(name)
    L, y, C = np.asarray(ds.train.L), np.asarray(ds.train.y), ds.num_classes
    scored = (L >= 0).any(axis=1) & (y >= 0)
    row = {
        "dataset": ds.name,
        "classes": C,
        "lfs": ds.num_lfs,
        "rows": len(L),
        "scored_rows": int(scored.sum()),
        "models": {},
    }

    def add(model: str, pred: np.ndarray, seconds: float, mask=scored) -> None:
        row["models"][model] = {
            "accuracy": float(np.mean(pred[mask] == y[mask])),
            "macro_f1": macro_f1(y[mask], pred[mask], C),
            "rows": int(mask.sum()),
            "seconds": seconds,
        }

    t0 = time.perf_counter()
    model = LabelModel(C).fit(L)
    add("LabelModel", model.predict(L), time.perf_counter() - t0)
    row["models"]["LabelModel"].update(iterations=model.n_iter_, converged=model.converged_)
    t0 = time.perf_counter()
    ds_model = DawidSkene(C).fit(L)
    add("DawidSkene", ds_model.predict(L), time.perf_counter() - t0)
    row["models"]["DawidSkene"].update(iterations=ds_model.n_iter_, converged=ds_model.converged_)
    if with_snorkel:
        t0 = time.perf_counter()
        pred = snorkel_predict(L, C)
        if pred is not None:
            add("Snorkel", pred, time.perf_counter() - t0)
    mv = majority_vote(L, C, tie_break="abstain").labels
    add("majority vote (non-tied)", mv, 0.0, scored & (mv >= 0))
    add("majority vote (lowest tie-break)", majority_vote(L, C).labels, 0.0)
    return row


def markdown(rows: list[dict], notes: list[str]) -> str:
    """The table: accuracy (macro-F1) per model and data set, in percent."""
    models = ["LabelModel", "DawidSkene", "Snorkel", "majority vote (non-tied)"]
    models += ["majority vote (lowest tie-break)"]
    models = [m for m in models if any(m in r["models"] for r in rows)]
    lines = [
        "| data | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for r in rows:
        cells = []
        for m in models:
            s = r["models"].get(m)
            if s is None:
                cells.append("-")
                continue
            cell = f"{100 * s['accuracy']:.1f} ({100 * s['macro_f1']:.1f})"
            if m == "majority vote (non-tied)":
                cell += f" [{100 * s['rows'] / max(r['scored_rows'], 1):.0f}% of rows]"
            cells.append(cell)
        label = f"{r['dataset']} ({r['lfs']} LFs, {r['classes']} classes)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Accuracy (macro-F1) in percent on the covered training rows with a gold label; every "
        "model fitted on the training votes alone."
    )
    lines += notes
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="comma-separated bundled names or rules / WRENCH directories",
    )
    parser.add_argument("--out", default="results/label_models", help="output folder")
    parser.add_argument("--no-snorkel", action="store_true", help="skip Snorkel's LabelModel")
    args = parser.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    notes = []
    with_snorkel = not args.no_snorkel
    if with_snorkel:
        try:
            import snorkel

            notes.append(f"Snorkel {snorkel.__version__}, LabelModel n_epochs={SNORKEL_EPOCHS}.")
        except ImportError:
            with_snorkel = False
            notes.append("Snorkel column skipped: snorkel is not importable here.")
    rows = [evaluate(n, with_snorkel) for n in names]
    text = markdown(rows, notes)
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "notes": notes}
    (out / "label_models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "label_models.md").write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
