"""Learning from rules: every method on SMS, YouTube and SemEval (or any rules / WRENCH directory).

Each method trains the same student (an MLP on TF-IDF features fitted on the training texts;
with entity spans, also the words between the entities) with Adam, for several seeds at
once, and is selected at its best epoch by macro-F1 on clean validation rows that produce
no hypergradients. The validation split is cut into three folds
(:func:`~amal_jax.recipes.harness.fold_roles`: ``amal_jax.clean.cross_fit`` with
``scheme="shared"``), and seed ``j`` of every method selects its epoch and configuration on
fold ``j % 3`` (:func:`~amal_jax.recipes.harness.cross_fitted`); the other two folds feed its
look-aheads and, for the methods that train on validation labels, are clean training rows
too (with the labelled training rows). So every method uses the folds in the same way, and
with at least three seeds a method's mean selection score covers every validation row, each
scored by a model that neither trained on it nor took hypergradients from it.

Baselines:

- ``labelled``: cross-entropy on the labelled rows only (skipped without labelled rows);
- ``labelled+mv``: plus cross-entropy to the majority vote on the unlabelled rows, its weight
  tuned on the selection data over :data:`WEIGHTS`;
- ``labelled+lm``: plus KL to the label model's (``LabelModel``) soft labels;
- ``l2rw`` / ``mwn``: learning to reweight / Meta-Weight-Net over the (gold, MV) losses
  (Meta-Weight-Net's meta learning rate tuned over :data:`MWN_LRS`);
- ``val``: the validation rows alone (skipped without labelled rows, where it is
  ``labelled+val``);
- ``labelled+val``: the labelled rows plus the validation rows;
- ``labelled+val+mv``: those clean rows at half of every batch plus the majority vote at a
  fixed weight tuned over :data:`WEIGHTS`.

AMAL variants:

- ``amal_mv``: the per-example table over (gold, MV);
- ``amal_lf_net``: one loss column per labelling function (cross-entropy to its vote where
  it fires), mixed by a mixing network;
- ``amal_trust``: the clean rows at half of every batch with a fixed weight, one loss column
  per labelling function mixed by :func:`amal_jax.trust_table` (a learned trust per rule,
  starting at 0.1, times a per-example correction), hypergradients from the clean training
  rows;
- ``amal_amortised (<variant>, meta every 5)``: after ``amal_selected``, the selected
  variant again with a meta update every 5th step (the amortised variant), with its seconds
  against one configuration of the plain baseline on the same rows (``cost_vs_plain``;
  :data:`PLAIN_REFERENCE`); ``--methods amal_trust_every5`` (any variant, ``_every<k>``)
  runs one such variant by name;
- ``amal_selected``: the AMAL variant (of ``amal_mv``, ``amal_lf_net``, ``amal_trust``) with
  the best mean selection score (chosen on validation, not test).

Also available with ``--methods``: ``amal_lm``, ``amal_lf`` (per-LF table) and
``amal_crossfit`` (table over gold and MV, one fold trains, one feeds hypergradients, one
selects). Every row records how many configurations it tried (``configs``); the learned
trust per rule of ``amal_trust`` is written with each rule's coverage and accuracy on the
validation split (``trust_<data>.csv`` / ``.json``, and a plot with ``--plot``).

Run ``python -m benchmarks.rules --help`` (from the repository root).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import time

import numpy as np

from amal_jax.recipes.harness import Result, Settings, compilation_cache, parse_hidden, tuned
from amal_jax.recipes.rules import (
    AMAL_METHODS,
    BASELINES,
    MAX_FEATURES,
    TRUST_INIT,
    RulesData,
    prepare,
    recipe,
)
from amal_jax.weak import rules
from benchmarks.environment import environment, environment_line
from benchmarks.report import (
    amortised_line,
    cost_against,
    selected_record,
    summary,
    verdict,
    yardstick_line,
)

DEFAULT_DATA = ("sms", "youtube", "semeval")
AMAL = ("amal_mv", "amal_lf_net", "amal_trust")
EXTRA = ("amal_lm", "amal_lf", "amal_crossfit")  # not in the default run
# amal_selected chooses among these.
SELECTABLE = ("amal_mv", "amal_lf_net", "amal_trust", "amal_lm", "amal_lf", "amal_crossfit")
AMORTISED_EVERY = 5
AMORTISABLE = SELECTABLE
# "amal_amortised": the selected variant again with a meta update every AMORTISED_EVERY
# steps (after amal_selected); "<variant>_every5" runs one such variant by name.
AMORTISED = ("amal_amortised",)
METHODS = BASELINES + AMAL + EXTRA + AMORTISED  # and "<variant>_every<k>" by name
DEFAULT_METHODS = BASELINES + AMAL + AMORTISED
WEIGHTS = (0.1, 0.3, 1.0)  # the grid of the fixed weak-label weights (MV)
MV_WEIGHTS = WEIGHTS
MWN_LRS = (1e-4, 1e-3, 1e-2)  # Meta-Weight-Net's meta learning rate (Adam), tuned
# The table variants, whose meta learning rate is --amal-lr.
TABLE_VARIANTS = ("amal_mv", "amal_lm", "amal_lf", "amal_crossfit")


def run_method(data: RulesData, method: str, settings: Settings, seeds, amal_lr: float) -> Result:
    base, every = split_amortised(method)
    if every > 1:
        # The same AMAL variant with a meta update every ``every``-th step.
        result = _run_method(data, base, settings, seeds, amal_lr, meta_every=every)
        return dataclasses.replace(result, method=method)
    return _run_method(data, method, settings, seeds, amal_lr)


def split_amortised(method: str) -> tuple[str, int]:
    """``"amal_mv_every5"`` -> ``("amal_mv", 5)``; any other name -> ``(name, 1)``."""
    head, sep, tail = method.rpartition("_every")
    if sep and tail.isdigit() and head in AMORTISABLE and int(tail) > 1:
        return head, int(tail)
    return method, 1


def amortised(method: str) -> str:
    """The name of ``method`` with a meta update every :data:`AMORTISED_EVERY` steps."""
    return f"{method}_every{AMORTISED_EVERY}"


def _run_method(data, method, settings, seeds, amal_lr, meta_every: int = 1) -> Result:
    t0 = time.perf_counter()
    if method in ("labelled+mv", "labelled+val+mv"):
        # The MV weight is tuned on the selection data (mean best selection score over seeds).
        runs = [recipe(data, method, weight=a).run(settings, seeds) for a in WEIGHTS]
        return tuned(method, runs, [f"a={a}" for a in WEIGHTS], time.perf_counter() - t0)[1]
    if method == "mwn":
        # Meta-Weight-Net's meta learning rate is tuned on the selection data.
        runs = [recipe(data, method, meta_lr=lr).run(settings, seeds) for lr in MWN_LRS]
        return tuned(method, runs, [f"meta_lr={lr}" for lr in MWN_LRS], time.perf_counter() - t0)[1]
    knobs = {}
    if method in AMAL_METHODS:
        knobs["meta_every"] = meta_every
    if method in TABLE_VARIANTS:
        knobs["meta_lr"] = amal_lr
    return recipe(data, method, **knobs).run(settings, seeds)


def record(dataset: str, r: Result) -> dict:
    return {
        "dataset": dataset,
        "method": r.method,
        "accuracy": summary(r.accuracy),
        "macro_f1": summary(r.macro_f1),
        "selection_macro_f1": summary(r.selection),
        "folds": r.folds,
        "seconds": r.seconds,
        "compile_seconds": r.compile_seconds,
        "configs": r.configs,
        "seconds_per_config": r.seconds / r.configs,
        "per_seed": {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "best_epoch": r.best_epoch},
    }


def trust_records(data: RulesData, result: Result) -> list[dict]:
    """Each rule's learned trust (mean and std over seeds and folds) with its coverage and
    accuracy on the validation split."""
    trusts = np.concatenate([np.asarray(w["trust"]) for w in result.final_weights])  # [F*S, K]
    rules_trust = trusts[:, : data.lf.shape[1]]  # the last column is the clean rows' own
    stats = data.lf_stats
    out = []
    for j, name in enumerate(stats.lf_names):
        acc = None if stats.accuracy is None else float(stats.accuracy[j])
        out.append(
            {
                "lf": name,
                "trust_mean": float(rules_trust[:, j].mean()),
                "trust_std": float(rules_trust[:, j].std()),
                "valid_coverage": float(stats.coverage[j]),
                "valid_accuracy": None if acc is None or np.isnan(acc) else acc,
                "train_coverage": float(data.lf_mask[:, j].mean()),
            }
        )
    return out


def write_trust(out: pathlib.Path, name: str, rows: list[dict], plot: bool) -> list[pathlib.Path]:
    """``trust_<name>.json`` and ``.csv`` (and ``.png`` with ``plot``) under ``out``."""
    paths = [out / f"trust_{name}.json", out / f"trust_{name}.csv"]
    paths[0].write_text(json.dumps(rows, indent=1))
    with paths[1].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        acc = np.array(
            [np.nan if r["valid_accuracy"] is None else r["valid_accuracy"] for r in rows]
        )
        trust = np.array([r["trust_mean"] for r in rows])
        cov = np.array([r["train_coverage"] for r in rows])
        seen = ~np.isnan(acc)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.scatter(acc[seen], trust[seen], s=20 + 2000 * cov[seen], alpha=0.6)
        ax.set_xlabel("rule accuracy on the validation split")
        ax.set_ylabel(f"learned trust (start {TRUST_INIT})")
        ax.set_title(
            f"{name}: {seen.sum()} of {len(rows)} rules fire on validation rows\n"
            "(marker area ~ coverage of the training rows)",
            fontsize=9,
        )
        fig.tight_layout()
        paths.append(out / f"trust_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def markdown(records: list[dict], settings: Settings, seeds: int) -> str:
    lines = [
        f"## Learning from rules: test accuracy and macro-F1 (%), mean +- std over {seeds} seeds",
        "",
        environment_line(environment()),
        "",
        f"Student: MLP {settings.hidden}, Adam {settings.learning_rate}, {settings.epochs} "
        f"epochs, batch {settings.batch_size}; every method runs on three validation folds "
        "(seed j selects on fold j % 3; the other two feed the look-aheads or train).",
        "",
        "| data | method | accuracy | macro-F1 | selection macro-F1 | configs | seconds | "
        "compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        a, f, s = r["accuracy"], r["macro_f1"], r["selection_macro_f1"]
        lines.append(
            f"| {r['dataset']} | {r['method']} | {100 * a['mean']:.1f} +- {100 * a['std']:.1f} | "
            f"{100 * f['mean']:.1f} +- {100 * f['std']:.1f} | "
            f"{100 * s['mean']:.1f} | {r['configs']} | {r['seconds']:.0f} | "
            f"{r.get('compile_seconds', 0.0):.0f} |"
        )
    lines += ["", *verdicts(records)]
    return "\n".join(lines) + "\n"


def verdicts(records: list[dict]) -> list[str]:
    """Per data set: ``amal_selected`` against the best baseline (by test mean), the same
    rule applied to the validation-chosen baseline (:func:`yardstick_line`), and the
    amortised row's line."""
    lines = []
    for name in dict.fromkeys(r["dataset"] for r in records):
        rows = [r for r in records if r["dataset"] == name]
        chosen = [r for r in rows if r["method"].startswith("amal_selected")]
        base = [r for r in rows if not r["method"].startswith("amal")]
        if not chosen or not base:
            continue
        for metric in ("macro_f1", "accuracy"):
            best = max(base, key=lambda r, m=metric: r[m]["mean"])
            lines.append(f"- {name}, {metric}: " + verdict(chosen[0], best, metric))
        yardstick = yardstick_line(base, "macro_f1", "selection_macro_f1")
        if yardstick is not None:
            lines.append(f"- {name}, macro_f1, {yardstick}")
        line = amortised_line(rows, SELECTABLE, "macro_f1")
        if line is not None:
            lines.append(f"- {name}, amortised: " + line)
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        action="append",
        help=f"bundled name {rules.BUNDLED_DATASETS} or a directory; repeatable",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"from {METHODS}")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--hidden",
        type=parse_hidden,
        default=(64,),
        help="the student MLP's hidden layers, e.g. 64 (the default) or 256,256; 'linear' for none",
    )
    parser.add_argument(
        "--max-features",
        type=int,
        default=MAX_FEATURES,
        help="TF-IDF vocabulary size (the most frequent word uni- and bigrams of the training "
        "texts; per block with entity spans)",
    )
    parser.add_argument(
        "--amal-lr", type=float, default=0.1, help="meta learning rate of the table variants"
    )
    parser.add_argument("--out", default="results/rules")
    parser.add_argument(
        "--compile-cache",
        default=".cache/jax",
        help="JAX's persistent compilation cache (folds and configurations of the same "
        "shapes compile once); empty to switch it off",
    )
    parser.add_argument("--plot", action="store_true", help="plot the learned trust per rule")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = {m for m in methods if m not in METHODS and split_amortised(m)[1] == 1}
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    settings = Settings(hidden=args.hidden, epochs=args.epochs)
    seeds = list(range(args.seeds))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with compilation_cache(args.compile_cache):
        return _benchmark(args, methods, settings, seeds, out)


def _benchmark(args, methods: list[str], settings: Settings, seeds: list[int], out) -> list[dict]:
    records: list[dict] = []
    for name in args.data or DEFAULT_DATA:
        data = prepare(name, args.max_features)
        print(f"\n{data.name}: labelling functions on the validation split")
        print(data.lf_table, flush=True)
        selectable = []
        for method in methods:
            if method in AMORTISED:
                continue  # after amal_selected
            if method in ("labelled", "val") and not data.gold_mask.any():
                why = "no labelled row" if method == "labelled" else "it equals labelled+val"
                print(f"{data.name:10s} {method:28s} skipped: {why}", flush=True)
                continue
            result = run_method(data, method, settings, seeds, args.amal_lr)
            rec = record(data.name, result)
            records.append(rec)
            if method in SELECTABLE:
                selectable.append(rec)
            if method == "amal_trust":
                for path in write_trust(out, data.name, trust_records(data, result), args.plot):
                    print(f"wrote {path}")
            _print(rec)
            _write(out, records, settings, len(seeds))
        if selectable:
            # Like for like: every candidate is rotated over the three folds, so its
            # selection score covers every validation row, each scored by a model that
            # neither trained on it nor took hypergradients from it.
            chosen = selected_record(selectable, "selection_macro_f1")
            records.append(chosen)
            _write(out, records, settings, len(seeds))
            if "amal_amortised" in methods:
                variant = chosen["method"][len("amal_selected (") : -1]
                rec = amortised_record(data, variant, records, settings, seeds, args)
                records.append(rec)
                _print(rec)
                _write(out, records, settings, len(seeds))
    print()
    print(markdown(records, settings, len(seeds)))
    return records


def _print(rec: dict) -> None:
    a, f = rec["accuracy"], rec["macro_f1"]
    print(
        f"{rec['dataset']:10s} {rec['method']:28s} acc {100 * a['mean']:5.1f} +- "
        f"{100 * a['std']:4.1f}  F1 {100 * f['mean']:5.1f} +- {100 * f['std']:4.1f}  "
        f"({rec['seconds']:.0f} s)",
        flush=True,
    )


# The plain (fixed-weight) baseline on the same weak data as each AMAL variant: the cost
# reference of its amortised version (one configuration of the tuned baseline). Its rows
# are not exactly the variant's: labelled+mv drops majority-vote ties, which the per-rule
# variants keep (YouTube 1278 rows against 1510, SemEval 1550 against 1749).
PLAIN_REFERENCE = {
    "amal_mv": "labelled+mv",
    "amal_lm": "labelled+lm",
    "amal_lf": "labelled+mv",
    "amal_lf_net": "labelled+mv",
    "amal_crossfit": "labelled+mv",
    "amal_trust": "labelled+val+mv",
}


def amortised_record(data, chosen: str, records, settings, seeds, args) -> dict:
    """``amal_amortised (<chosen>)``: the selected variant with a meta update every
    :data:`AMORTISED_EVERY` steps, with its seconds against the plain baseline's on the
    same rows (``plain_seconds``: one configuration of it) and against the full variant."""
    base = chosen.split(" ")[0]
    result = run_method(data, amortised(base), settings, seeds, args.amal_lr)
    rec = record(data.name, result)
    rec["method"] = f"amal_amortised ({base}, meta every {AMORTISED_EVERY})"
    same = [r for r in records if r["dataset"] == data.name]
    full = next(r for r in same if r["method"] == chosen)
    rec["full_seconds"] = full["seconds"]
    plain = [r for r in same if r["method"].split(" ")[0] == PLAIN_REFERENCE[base]]
    if plain:
        rec.update(cost_against(rec, plain[0], full))
    return rec


def _write(out: pathlib.Path, records, settings, seeds) -> None:
    (out / "rules.json").write_text(json.dumps(records, indent=1))
    (out / "rules.md").write_text(markdown(records, settings, seeds))


if __name__ == "__main__":
    main()
