"""Learning from rules: every method on SMS and YouTube (or any rules / WRENCH directory).

Each method trains the same student (an MLP on TF-IDF features fitted on the training texts)
with Adam, for several seeds at once, and is selected at its best epoch by macro-F1 on a part
of the validation set that produces no hypergradients (``sel``); the other part (``meta``)
feeds the look-aheads of the methods that use one. Methods:

- ``labelled``: cross-entropy on the labelled rows only;
- ``labelled+mv``: plus cross-entropy to the majority vote on the unlabelled rows, its weight
  tuned on the selection data from a small grid;
- ``labelled+lm``: plus KL to the label model's (Dawid-Skene) soft labels;
- ``l2rw`` / ``mwn``: learning to reweight / Meta-Weight-Net over the (gold, MV) losses;
- ``labelled+val``: the labelled rows plus the validation labels as training data,
  cross-fitted (train on k-1 folds of the validation set, select on the remaining one,
  rotate; the test metrics are averaged over the folds);
- ``amal_mv`` / ``amal_lm``: AMAL's per-example table over (gold, MV) / (gold, label model);
- ``amal_lf`` / ``amal_lf_net``: one loss column per labelling function (cross-entropy to its
  vote where it fires), mixed by a table / by a mixing network;
- ``amal_crossfit``: AMAL (table over gold and MV) that also trains on validation labels:
  three folds take turns as selection data, hypergradient data and extra training rows;
- ``amal_selected``: the AMAL variant with the best mean selection score (chosen on
  validation, not test).

Run ``python benchmarks/rules.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from amal_jax.data import format_lf_summary, label_models, lf_summary, rules
from benchmarks.harness import (
    Method,
    Problem,
    Result,
    Settings,
    append_gold_rows,
    combine_folds,
    summary,
    train,
)

DEFAULT_DATA = ("sms", "youtube")
BASELINES = ("labelled", "labelled+mv", "labelled+lm", "l2rw", "mwn", "labelled+val")
AMAL = ("amal_mv", "amal_lm", "amal_lf", "amal_lf_net", "amal_crossfit")
METHODS = BASELINES + AMAL
MV_WEIGHTS = (0.1, 0.3, 1.0)  # the grid for the majority-vote weight of labelled+mv
FOLDS = 3


@dataclasses.dataclass(frozen=True)
class RulesData:
    """A weak data set turned into arrays: features, the four kinds of loss columns."""

    name: str
    num_classes: int
    x_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    gold: np.ndarray  # [N, C] one-hot where labelled, with mask
    gold_mask: np.ndarray  # [N]
    mv: np.ndarray  # [N, C] one-hot majority vote on unlabelled rows
    mv_mask: np.ndarray
    lm: np.ndarray  # [N, C] label model soft labels on unlabelled covered rows
    lm_mask: np.ndarray
    lf: np.ndarray  # [N, m, C] one-hot LF votes on unlabelled rows
    lf_mask: np.ndarray  # [N, m]
    folds: tuple[np.ndarray, ...]  # validation row indices, FOLDS disjoint parts
    lf_table: str  # the LF summary on the validation split, printable


def prepare(name_or_path: str, max_features: int) -> RulesData:
    ds = rules.load_weak_dataset(name_or_path)
    feats = rules.tfidf_features(ds, max_features=max_features)
    c = ds.num_classes
    eye = np.eye(c, dtype=np.float32)
    train = ds.train
    labelled = np.asarray(train.labelled, bool)
    unlabelled = ~labelled
    # Ties abstain: on YouTube a lowest-class tie-break would give ~250 mostly-spam rows HAM.
    mv = np.asarray(label_models.majority_vote(train.L, c, tie_break="abstain").labels)
    # The labelled rows fix their own labels in the EM (they are gold).
    lm_model = label_models.DawidSkene(c).fit(train.L, np.where(train.labelled, train.y, -1))
    lm = np.asarray(lm_model.predict_proba(train.L), np.float32)
    covered = (train.L != -1).any(axis=1)
    votes = np.where(train.L >= 0, train.L, 0)
    lf_mask = (train.L >= 0) & unlabelled[:, None]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds.valid))
    return RulesData(
        name=ds.name,
        num_classes=c,
        x_train=feats.train,
        x_valid=feats.valid,
        y_valid=np.asarray(ds.valid.y),
        x_test=feats.test,
        y_test=np.asarray(ds.test.y),
        gold=eye[np.asarray(train.y)],
        gold_mask=labelled.astype(np.float32),
        mv=eye[np.where(mv >= 0, mv, 0)],
        mv_mask=(unlabelled & (mv >= 0)).astype(np.float32),
        lm=lm,
        lm_mask=(unlabelled & covered).astype(np.float32),
        lf=eye[votes],
        lf_mask=lf_mask.astype(np.float32),
        folds=tuple(np.sort(f) for f in np.array_split(order, FOLDS)),
        lf_table=format_lf_summary(
            lf_summary(ds.valid.L, ds.valid.y, lf_names=ds.lf_names, class_names=ds.class_names),
            max_rows=15,
        ),
    )


def problem(data: RulesData, columns: str, *, sel, meta, extra=None) -> Problem:
    """A harness problem: ``columns`` in ``gold`` / ``gold+mv`` / ``gold+lm`` / ``gold+lf``.

    ``sel`` and ``meta`` are validation row indices; ``extra`` validation rows (if any) join
    the training set with their gold labels.
    """
    targets, masks, names = [data.gold[:, None]], [data.gold_mask[:, None]], ["gold"]
    if columns == "gold+mv":
        targets.append(data.mv[:, None])
        masks.append(data.mv_mask[:, None])
        names.append("mv")
    elif columns == "gold+lm":
        targets.append(data.lm[:, None])
        masks.append(data.lm_mask[:, None])
        names.append("lm")
    elif columns == "gold+lf":
        targets.append(data.lf)
        masks.append(data.lf_mask)
        names += [f"lf{j}" for j in range(data.lf.shape[1])]
    elif columns != "gold":
        raise ValueError(f"unknown columns {columns!r}")
    x = data.x_train
    t = np.concatenate(targets, axis=1)
    m = np.concatenate(masks, axis=1)
    if extra is not None:
        x, t, m = append_gold_rows(
            x, t, m, data.x_valid[extra], data.y_valid[extra], data.num_classes
        )
    keep = m.any(axis=1)
    return Problem(
        name=data.name,
        x_train=x[keep],
        targets=t[keep],
        mask=m[keep],
        temperatures=(1.0,) * t.shape[1],
        columns=tuple(names),
        x_meta=data.x_valid[meta],
        y_meta=data.y_valid[meta],
        x_sel=data.x_valid[sel],
        y_sel=data.y_valid[sel],
        x_test=data.x_test,
        y_test=data.y_test,
        num_classes=data.num_classes,
    )


def run_method(data: RulesData, method: str, settings: Settings, seeds, amal_lr: float) -> Result:
    t0 = time.perf_counter()
    f = data.folds
    sel, meta = f[0], np.concatenate(f[1:])
    if method == "labelled":
        return train(problem(data, "gold", sel=sel, meta=meta), _fixed(method, 1), settings, seeds)
    if method == "labelled+mv":
        # The MV weight is tuned on the selection data (mean best selection score over seeds).
        p = problem(data, "gold+mv", sel=sel, meta=meta)
        runs = [train(p, _fixed(f"{method} a={a}", 2, a), settings, seeds) for a in MV_WEIGHTS]
        best = max(runs, key=lambda r: np.mean(r.selection))
        best.method = f"{method} (a={MV_WEIGHTS[runs.index(best)]})"
        best.seconds = time.perf_counter() - t0
        return best
    if method == "labelled+lm":
        p = problem(data, "gold+lm", sel=sel, meta=meta)
        return train(p, _fixed(method, 2, 1.0), settings, seeds)
    if method in ("l2rw", "mwn"):
        p = problem(data, "gold+mv", sel=sel, meta=meta)
        kind = Method(method, method, meta_lr=1e-3)
        return train(p, kind, settings, seeds)
    if method == "labelled+val":
        results = []
        for i in range(FOLDS):
            rest = np.concatenate([f[j] for j in range(FOLDS) if j != i])
            p = problem(data, "gold", sel=f[i], meta=rest, extra=rest)
            results.append(train(p, _fixed(method, 1), settings, seeds))
        return combine_folds(method, results, time.perf_counter() - t0)
    if method == "amal_crossfit":
        results = []
        for i in range(FOLDS):
            p = problem(
                data, "gold+mv", sel=f[i], meta=f[(i + 1) % FOLDS], extra=f[(i + 2) % FOLDS]
            )
            results.append(train(p, _amal(method, 2, amal_lr), settings, seeds))
        return combine_folds(method, results, time.perf_counter() - t0)
    columns = {
        "amal_mv": "gold+mv",
        "amal_lm": "gold+lm",
        "amal_lf": "gold+lf",
        "amal_lf_net": "gold+lf",
    }[method]
    p = problem(data, columns, sel=sel, meta=meta)
    mixer = "network" if method == "amal_lf_net" else "table"
    return train(p, _amal(method, p.mask.shape[1], amal_lr, mixer), settings, seeds)


def _fixed(name: str, k: int, aux: float = 1.0) -> Method:
    return Method(name, "fixed", weights=(1.0,) + (aux,) * (k - 1))


def _amal(name: str, k: int, lr: float, mixer: str = "table") -> Method:
    if mixer == "network":
        return Method(
            name, "amal", weights=(1.0,) * k, mixer="network", meta_lr=1e-3, meta_optimizer="adam"
        )
    return Method(name, "amal", weights=(1.0,) * k, meta_lr=lr)


def record(dataset: str, r: Result) -> dict:
    return {
        "dataset": dataset,
        "method": r.method,
        "accuracy": summary(r.accuracy),
        "macro_f1": summary(r.macro_f1),
        "selection_macro_f1": summary(r.selection),
        "seconds": r.seconds,
        "per_seed": {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "best_epoch": r.best_epoch},
    }


def markdown(records: list[dict], settings: Settings, seeds: int) -> str:
    lines = [
        f"## Learning from rules: test accuracy and macro-F1 (%), mean +- std over {seeds} seeds",
        "",
        f"Student: MLP {settings.hidden}, Adam {settings.learning_rate}, {settings.epochs} "
        f"epochs, batch {settings.batch_size}; model selection on a validation part without "
        "hypergradients.",
        "",
        "| data | method | accuracy | macro-F1 | selection macro-F1 | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        a, f, s = r["accuracy"], r["macro_f1"], r["selection_macro_f1"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {100 * a['mean']:.1f} +- {100 * a['std']:.1f} | "
            f"{100 * f['mean']:.1f} +- {100 * f['std']:.1f} | "
            f"{100 * s['mean']:.1f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", action="append", help="bundled name (sms, youtube) or a directory; repeatable"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {METHODS}")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-features", type=int, default=10000)
    parser.add_argument("--amal-lr", type=float, default=0.1, help="meta learning rate")
    parser.add_argument("--out", default="results/rules")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    settings = Settings(epochs=args.epochs)
    seeds = list(range(args.seeds))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for name in args.data or DEFAULT_DATA:
        data = prepare(name, args.max_features)
        print(f"\n{data.name}: labelling functions on the validation split")
        print(data.lf_table, flush=True)
        amal_records = []
        for method in methods:
            result = run_method(data, method, settings, seeds, args.amal_lr)
            rec = record(data.name, result)
            records.append(rec)
            if method.startswith("amal"):
                amal_records.append(rec)
            a, f = rec["accuracy"], rec["macro_f1"]
            print(
                f"{data.name:10s} {rec['method']:28s} acc {100 * a['mean']:5.1f} +- "
                f"{100 * a['std']:4.1f}  F1 {100 * f['mean']:5.1f} +- {100 * f['std']:4.1f}  "
                f"({rec['seconds']:.0f} s)",
                flush=True,
            )
            _write(out, records, settings, len(seeds))
        if amal_records:
            best = max(amal_records, key=lambda r: r["selection_macro_f1"]["mean"])
            chosen = dict(best, method=f"amal_selected ({best['method']})")
            records.append(chosen)
            _write(out, records, settings, len(seeds))
    print()
    print(markdown(records, settings, len(seeds)))
    return records


def _write(out: pathlib.Path, records, settings, seeds) -> None:
    (out / "rules.json").write_text(json.dumps(records, indent=1))
    (out / "rules.md").write_text(markdown(records, settings, seeds))


if __name__ == "__main__":
    main()
