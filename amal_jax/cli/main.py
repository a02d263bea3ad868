"""``amal-jax``: learn per-example loss weights from rules or teachers, from the command line.

Subcommands:

- ``amal-jax rules --data DIR|sms|youtube|semeval --method M --out OUT``: a student on a
  rules / WRENCH directory's texts, learning from its rules (and labelled rows);
- ``amal-jax kd --data FILE.npz|digits|fashion_mnist|synthetic --noise R --method M --out OUT``:
  a student learning from (noisy) labels and teachers (trained once, then cached);
- ``amal-jax lf-summary DIR``: the labelling functions' coverage, overlaps, conflicts and
  accuracy (``--csv`` for a CSV);
- ``amal-jax bench [speed|rules|kd|all]``: the benchmark suite of a checkout.

``rules`` and ``kd`` write into ``OUT``: ``config.toml`` (the resolved options; ``--config
OUT/config.toml`` runs it again), ``metrics.jsonl`` (a line per epoch and fold), ``final.json``,
``predictions.csv``, ``weights.npz``, for rules ``lf_trust.csv``, and PNG plots; checkpoints
every epoch under ``OUT/checkpoints`` (``--resume`` continues a stopped run).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence

import numpy as np

from amal_jax.cli import options, run
from amal_jax.recipes.harness import parse_hidden

DEFAULT_SEEDS = 3
OUTPUT_FILES = (
    "config.toml",
    "metrics.jsonl",
    "final.json",
    "predictions.csv",
    "weights.npz",
    "lf_trust.csv",
    "learning_curves.png",
    "weight_histograms.png",
    "weight_vs_teacher_confidence.png",
    "trust_vs_accuracy.png",
)
# Options that do not change what a run computes (a resumed run may change them).
NOT_IDENTITY = ("config", "resume", "overwrite", "quiet", "no_plots", "out", "teacher_cache")


def _training_options(p: argparse.ArgumentParser, *, epochs: str, batch: str, lr: str) -> None:
    p.add_argument("--out", help="output directory (created; required)")
    p.add_argument(
        "--seeds",
        type=int,
        help=f"number of seeds, 0..N-1 (default {DEFAULT_SEEDS}: seed j selects on fold j %% 3)",
    )
    p.add_argument("--epochs", type=int, help=f"training epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, help=f"training batch size (default {batch})")
    p.add_argument("--learning-rate", type=float, help=f"the student's Adam learning rate ({lr})")
    p.add_argument(
        "--hidden",
        type=parse_hidden,
        help="the student MLP's hidden layers, e.g. 64 or 128,64; 'linear' for none",
    )
    p.add_argument("--meta-lr", type=float, help="meta learning rate (AMAL variants, mwn)")
    p.add_argument(
        "--meta-every", type=int, help="AMAL variants: a meta update every this many steps (1)"
    )
    p.add_argument("--config", help="a TOML file of options (the command line wins)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run in --out from its checkpoints",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's files and checkpoints in --out first",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, no tables")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from amal_jax.recipes import distill, rules

    parser = argparse.ArgumentParser(
        prog="amal-jax",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{rules,kd,lf-summary,bench}")
    subs = {}

    p = sub.add_parser(
        "rules",
        help="learn from rules (a rules or WRENCH directory)",
        description="Train a student on a rules / WRENCH directory with one method, over "
        "three validation folds (seed j selects its epoch on fold j % 3; the other folds "
        "feed the look-aheads, or train). Methods: "
        + "; ".join(rules.METHODS)
        + ". See amal_jax.recipes.rules for what each does.",
    )
    p.add_argument("--data", help="a bundled name (sms, youtube, semeval) or a directory")
    p.add_argument(
        "--method", choices=rules.METHODS, metavar="M", help="the method (default amal_trust)"
    )
    _training_options(p, epochs="20", batch="64", lr="1e-3")
    p.add_argument(
        "--weight",
        type=float,
        help="the fixed weight of the weak column (labelled+mv, labelled+val+mv: 0.3; "
        "labelled+lm: 1.0)",
    )
    p.add_argument(
        "--trust-init",
        type=float,
        help=f"amal_trust: every rule's first trust ({rules.TRUST_INIT})",
    )
    p.add_argument(
        "--max-features", type=int, help=f"TF-IDF vocabulary size ({rules.MAX_FEATURES})"
    )
    subs["rules"] = p

    p = sub.add_parser(
        "kd",
        help="distil from teachers with (noisy) labels",
        description="Train a student on a classification data set with symmetric label noise "
        "and teachers (trained once and cached), with one method, over three validation "
        "folds. Methods: "
        + "; ".join(distill.METHODS)
        + ". See amal_jax.recipes.distill for what each does.",
    )
    p.add_argument("--data", help="digits, fashion_mnist, synthetic or a .npz file")
    p.add_argument("--noise", type=float, help="symmetric label-noise rate in [0, 1] (0)")
    p.add_argument(
        "--method", choices=distill.METHODS, metavar="M", help="the method (default amal_exact)"
    )
    p.add_argument(
        "--teachers", type=int, help=f"number of teachers, 1..{distill.MAX_TEACHERS} (1)"
    )
    p.add_argument(
        "--teacher-labels",
        choices=distill.TEACHER_LABELS,
        help="what the teachers learn from: the noisy labels (default) or the clean ones",
    )
    p.add_argument("--teacher-cache", help="directory of cached teacher logits (.cache/teachers)")
    _training_options(p, epochs="the data set's budget", batch="the budget's", lr="the budget's")
    p.add_argument(
        "--alpha", type=float, help=f"kd, kd+val: the KD weight; AMAL: its start ({distill.ALPHA})"
    )
    subs["kd"] = p

    p = sub.add_parser(
        "lf-summary",
        help="the labelling functions' table",
        description="Coverage, overlaps, conflicts, (with labels) accuracy and the label "
        "model's learned accuracy (LabelModel fitted on the training votes) of every "
        "labelling function of a rules / WRENCH directory or bundled data set.",
    )
    p.add_argument("data", help="a bundled name (sms, youtube, semeval) or a directory")
    p.add_argument(
        "--split", choices=("train", "valid", "test"), default="valid", help="which split (valid)"
    )
    p.add_argument("--csv", help="also write the table as CSV to this file ('-': stdout only)")
    p.add_argument("--max-rows", type=int, help="print at most this many rules")
    subs["lf-summary"] = p

    p = sub.add_parser(
        "bench",
        help="the benchmark suite (from a checkout)",
        description="Run the benchmark suite of a checkout of the amal_jax repository "
        "(python -m benchmarks): speed, rules, kd or all, printing its tables.",
    )
    p.add_argument("suite", nargs="?", default="all", choices=("speed", "rules", "kd", "all"))
    p.add_argument("--out", default="results", help="results folder (results)")
    p.add_argument(
        "--profile",
        choices=("default", "accelerator", "tiny"),
        default="default",
        help="the sizes: default (CPU), accelerator (GPU: ResNet-18 rows, larger students, "
        "more seeds and epochs) or tiny (a quick check that everything runs)",
    )
    subs["bench"] = p
    return parser, subs


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        raise SystemExit(2)
    if getattr(args, "config", None):
        sub = subs[args.command]
        sub.set_defaults(**options.load_toml(args.config, args.command, sub))
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "lf-summary":
            return lf_summary_command(args)
        if args.command == "bench":
            return bench_command(args)
        return train_command(args)
    except (ValueError, FileNotFoundError) as err:  # bad options or data: say what, no traceback
        raise SystemExit(f"amal-jax {args.command}: {err}") from err


# --- rules and kd --------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> dict:
    """Every option of the run with its default filled in (what ``config.toml`` records)."""
    from amal_jax.recipes import distill, rules

    if not args.data:
        raise SystemExit(f"amal-jax {args.command}: --data is required (or 'data' in --config)")
    if not args.out:
        raise SystemExit(f"amal-jax {args.command}: --out is required (or 'out' in --config)")
    seeds = DEFAULT_SEEDS if args.seeds is None else args.seeds
    if seeds < 1:
        raise SystemExit(f"amal-jax {args.command}: --seeds must be at least 1")
    for name in ("epochs", "batch_size", "meta_every", "max_features", "teachers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise SystemExit(f"amal-jax {args.command}: --{name.replace('_', '-')} must be >= 1")
    values = {"command": args.command, "data": str(args.data)}
    if args.command == "rules":
        method = args.method or "amal_trust"
        values.update(method=method, max_features=args.max_features or rules.MAX_FEATURES)
        settings = rules_settings(args)
        knobs = {"weight": args.weight, "meta_lr": args.meta_lr}
        knobs.update(meta_every=args.meta_every, trust_init=args.trust_init)
        used = rules.knobs_of(method)
    else:
        method = args.method or "amal_exact"
        noise = 0.0 if args.noise is None else args.noise
        if not 0.0 <= noise <= 1.0:
            raise SystemExit("amal-jax kd: --noise must lie in [0, 1]")
        teachers = args.teachers or 1
        if teachers > distill.MAX_TEACHERS:
            raise SystemExit(f"amal-jax kd: --teachers must be at most {distill.MAX_TEACHERS}")
        labels = args.teacher_labels or "noisy"
        setting = distill.Setting(args.data, noise, teachers, labels)
        values.update(
            method=method,
            noise=noise,
            teachers=teachers,
            teacher_labels=setting.teacher_labels,
            teacher_cache=args.teacher_cache or ".cache/teachers",
        )
        settings = kd_settings(args)
        knobs = {"alpha": args.alpha, "meta_lr": args.meta_lr, "meta_every": args.meta_every}
        used = distill.knobs_of(method)
    unused = sorted(k for k, v in knobs.items() if v is not None and k not in used)
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise SystemExit(
            f"amal-jax {args.command}: method {method!r} takes no {flags} (its knobs: "
            f"{', '.join('--' + k.replace('_', '-') for k in used) or 'none'})"
        )
    values.update(
        seeds=seeds,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        hidden=list(settings.hidden),
        select_metric=settings.select_metric,
    )
    recipes = rules if args.command == "rules" else distill
    values["knobs"] = recipes.default_knobs(method)
    values["knobs"].update({k: v for k, v in knobs.items() if v is not None})
    values["out"] = str(args.out)
    return values


def rules_settings(args) -> run.Settings:
    return run.Settings(
        hidden=(64,) if args.hidden is None else args.hidden,
        epochs=args.epochs or 20,
        batch_size=args.batch_size or 64,
        learning_rate=1e-3 if args.learning_rate is None else args.learning_rate,
    )


def kd_settings(args) -> run.Settings:
    from amal_jax.recipes import distill

    s = distill.settings_for(args.data, args.epochs)
    return dataclasses.replace(
        s,
        hidden=s.hidden if args.hidden is None else args.hidden,
        batch_size=args.batch_size or s.batch_size,
        learning_rate=s.learning_rate if args.learning_rate is None else args.learning_rate,
    )


def _config_text(values: dict) -> str:
    flat = {k: v for k, v in values.items() if k != "knobs"}
    flat.update({k: v for k, v in values["knobs"].items() if v is not None})
    flat.pop("command")
    flat.pop("select_metric")
    return options.to_toml(
        flat,
        header=f"amal-jax {values['command']}: the resolved options of this run\n"
        f"(amal-jax {values['command']} --config config.toml runs it again)",
    )


def _identity(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in NOT_IDENTITY}


def _prepare_out(out: pathlib.Path, values: dict, args) -> None:
    config = out / "config.toml"
    checkpoints = out / "checkpoints"
    if args.resume and args.overwrite:
        raise SystemExit("--resume and --overwrite exclude each other")
    if args.overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(checkpoints, ignore_errors=True)
    elif args.resume:
        if not config.exists():
            raise SystemExit(f"--resume: {out} holds no run (no config.toml)")
        saved = tomllib.loads(config.read_text())
        mine = tomllib.loads(_config_text(values))
        differ = sorted(
            k
            for k in set(saved) | set(mine)
            if k not in NOT_IDENTITY and saved.get(k) != mine.get(k)
        )
        if differ:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in differ)
            raise SystemExit(
                f"--resume: the options differ from the stopped run's ({shown}); "
                "resume with its options (--config OUT/config.toml) or start over with --overwrite"
            )
    elif config.exists() or checkpoints.exists():
        raise SystemExit(
            f"{out} already holds a run; --resume continues it, --overwrite starts over"
        )


def _write_config(out: pathlib.Path, values: dict) -> None:
    """``config.toml``, once the data have loaded and the method is set up."""
    out.mkdir(parents=True, exist_ok=True)
    with run.atomic_write(out / "config.toml") as fh:
        fh.write(_config_text(values))


def train_command(args: argparse.Namespace) -> int:
    values = _resolve(args)
    out = pathlib.Path(values["out"])
    _prepare_out(out, values, args)
    t0 = time.perf_counter()
    if args.command == "rules":
        outcome = _run_rules(args, values, out)
    else:
        outcome = _run_kd(args, values, out)
    final, plots = outcome
    final["total_seconds"] = time.perf_counter() - t0
    run.write_json(out / "final.json", final)
    if not args.quiet:
        print_table(final, values)
        for path in plots:
            print(f"wrote {path}")
        print(f"outputs in {out}")
    return 0


def _settings(values: dict) -> run.Settings:
    return run.Settings(
        hidden=tuple(values["hidden"]),
        epochs=values["epochs"],
        batch_size=values["batch_size"],
        learning_rate=values["learning_rate"],
        select_metric=values["select_metric"],
    )


def _run_rules(args, values: dict, out: pathlib.Path):
    from amal_jax.cli import plots
    from amal_jax.recipes import rules

    data = rules.prepare(values["data"], values["max_features"])
    method = values["method"]
    if method in ("labelled", "val") and not data.gold_mask.any():
        raise SystemExit(
            f"amal-jax rules: {data.name} has no labelled training rows, so {method!r} has "
            "nothing to train on"
            + (" ('val' is then the same as 'labelled+val')" if method == "val" else "")
        )
    if not args.quiet:
        print(f"{data.name}: labelling functions on the validation split")
        print(data.lf_table, flush=True)
    recipe = rules.recipe(data, method, **values["knobs"])
    unlabelled = np.flatnonzero(data.gold_mask == 0)
    predict = {"test": data.x_test, "unlabelled": data.x_train[unlabelled]}
    seeds = list(range(values["seeds"]))
    _write_config(out, values)
    result, outputs = run.train_folds(
        recipe, _settings(values), seeds, out, predict, quiet=args.quiet
    )
    names = data.class_names or tuple(str(c) for c in range(data.num_classes))
    test = np.arange(len(data.y_test))
    run.write_predictions(
        out / "predictions.csv",
        [
            ("test", test, data.test_ids, data.y_test, run.ensemble(outputs, "test")),
            (
                "train",
                unlabelled,
                [data.train_ids[i] for i in unlabelled],
                None,
                run.ensemble(outputs, "unlabelled"),
            ),
        ],
        names,
    )
    run.write_weights(out / "weights.npz", outputs)
    trust_rows = lf_trust_rows(data, outputs)
    run.write_csv(out / "lf_trust.csv", trust_rows)
    final = run.final_record(
        result,
        recipe,
        seeds,
        outputs,
        data.y_test,
        data.num_classes,
        "macro_f1",
        extra={"data": data.name, "rules": len(trust_rows)},
    )
    written = []
    if not args.no_plots:
        written = _common_plots(out, "macro_f1")
        written.append(plots.trust_vs_accuracy(trust_rows, out / "trust_vs_accuracy.png"))
    return final, written


def _common_plots(out: pathlib.Path, metric: str) -> list[pathlib.Path]:
    from amal_jax.cli import plots

    lines = run.read_metrics(out)
    written = [plots.learning_curves(lines, metric, out / "learning_curves.png")]
    hist = plots.weight_histograms(lines, out / "weight_histograms.png")
    if hist is not None:
        written.append(hist)
    return written


def lf_trust_rows(data, outputs: Sequence[run.FoldOutputs]) -> list[dict]:
    """Per rule: its learned weight (mean and std over every seed of every fold), how that
    weight is read (``weight_of``), its coverage of the training rows and its coverage and
    accuracy on the validation split.

    The learned weight of rule ``j`` is the trust mixer's trust of its column
    (``amal_trust``), else the mean weight of its own column ``lf<j>`` over the rows it
    fires on (``amal_lf``, ``amal_lf_net``), else the mean weight of the weak column
    (``mv``, ``lm``) over the training rows the rule fires on; empty for a method that
    keeps no weights (``l2rw``) or a rule that fires on no training row of the run.
    """
    stats = data.lf_stats
    votes = data.train_votes
    per_rule: list[list[float]] = [[] for _ in stats.lf_names]
    kind = ""
    for o in outputs:
        if o.trust is not None:
            kind = "trust"
            for j in range(len(per_rule)):
                per_rule[j].extend(o.trust[:, j].tolist())
            continue
        if o.weights is None:
            continue
        train_rows = np.asarray(
            [int(r.split(":")[1]) if r.startswith("train:") else -1 for r in o.row_ids]
        )
        own = {name: k for k, name in enumerate(o.columns)}
        weak = next((own[c] for c in ("mv", "lm") if c in own), None)
        for j in range(len(per_rule)):
            fires = (train_rows >= 0) & (votes[np.maximum(train_rows, 0), j] >= 0)
            if f"lf{j}" in own:
                kind, k = "own column", own[f"lf{j}"]
            elif weak is not None:
                kind, k = f"{o.columns[weak]} column on its rows", weak
            else:
                continue
            rows = fires & (o.mask[:, k] > 0)
            if rows.any():
                per_rule[j].extend(o.weights[:, rows, k].mean(axis=1).tolist())
    out = []
    for j, name in enumerate(stats.lf_names):
        acc = None if stats.accuracy is None else float(stats.accuracy[j])
        w = per_rule[j]
        out.append(
            {
                "lf": name,
                "learned_weight": float(np.mean(w)) if w else None,
                "learned_weight_std": float(np.std(w)) if w else None,
                "weight_of": kind if w else "",
                "train_coverage": float(np.mean(votes[:, j] >= 0)),
                "valid_coverage": float(stats.coverage[j]),
                "valid_accuracy": None if acc is None or np.isnan(acc) else acc,
            }
        )
    return out


def _run_kd(args, values: dict, out: pathlib.Path):
    from amal_jax.cli import plots
    from amal_jax.distill import teachers
    from amal_jax.recipes import distill

    setting = distill.Setting(
        values["data"], values["noise"], values["teachers"], values["teacher_labels"]
    )
    kd = distill.prepare(setting, values["teacher_cache"])
    if not args.quiet:
        for t in kd.teacher_logits:
            cached = "cached" if t.from_cache else f"trained in {t.train_seconds:.0f} s"
            print(f"teacher {t.config.kind} test accuracy {100 * t.test_accuracy:.1f} ({cached})")
    recipe = distill.recipe(kd, values["method"], epochs=values["epochs"], **values["knobs"])
    d = kd.data
    predict = {"test": d.x_test, "train": d.x_train}
    seeds = list(range(values["seeds"]))
    _write_config(out, values)
    result, outputs = run.train_folds(
        recipe, _settings(values), seeds, out, predict, quiet=args.quiet
    )
    names = tuple(str(c) for c in range(d.num_classes))
    test, train = np.arange(len(d.y_test)), np.arange(len(d.y_train))
    run.write_predictions(
        out / "predictions.csv",
        [
            ("test", test, [str(i) for i in test], d.y_test, run.ensemble(outputs, "test")),
            ("train", train, [str(i) for i in train], d.y_train, run.ensemble(outputs, "train")),
        ],
        names,
    )
    run.write_weights(out / "weights.npz", outputs)
    final = run.final_record(
        result,
        recipe,
        seeds,
        outputs,
        d.y_test,
        d.num_classes,
        "accuracy",
        extra={
            "data": d.name,
            "teachers": [
                {
                    "kind": t.config.kind,
                    "hidden": list(t.config.hidden),
                    "test_accuracy": t.test_accuracy,
                }
                for t in kd.teacher_logits
            ],
        },
    )
    written = []
    if not args.no_plots:
        written = _common_plots(out, "accuracy")
        first = outputs[0]
        if first.weights is not None and "kd0" in first.columns:
            k = first.columns.index("kd0")
            train_rows = np.asarray(
                [int(r.split(":")[1]) if r.startswith("train:") else -1 for r in first.row_ids]
            )
            rows = (train_rows >= 0) & (first.mask[:, k] > 0)
            probs = teachers.softmax(kd.teacher_logits[0].train, 1.0)
            confidence = probs[train_rows[rows]].max(axis=-1)
            weights = first.weights[:, rows, k].mean(axis=0)
            written.append(
                plots.weight_vs_confidence(
                    weights, confidence, "kd0", out / "weight_vs_teacher_confidence.png"
                )
            )
    return final, written


def print_table(final: dict, values: dict) -> None:
    """The final result table: per seed, then the mean and std."""
    from rich.console import Console
    from rich.table import Table

    metric = f"valid_{values['select_metric']}"
    knobs = ", ".join(f"{k}={v}" for k, v in final["knobs"].items())
    table = Table(title=f"{final['data']}: {final['method']}" + (f" ({knobs})" if knobs else ""))
    for col in (
        "seed",
        "fold",
        "best epoch",
        f"valid {values['select_metric']}",
        "test accuracy",
        "test macro-F1",
    ):
        table.add_column(col, justify="right")
    per = final["per_seed"]
    for i, seed in enumerate(final["seeds"]):
        table.add_row(
            str(seed),
            str(per["fold"][i]),
            str(per["best_epoch"][i]),
            f"{100 * per[metric][i]:.1f}",
            f"{100 * per['accuracy'][i]:.1f}",
            f"{100 * per['macro_f1'][i]:.1f}",
        )
    a, f, v = final["accuracy"], final["macro_f1"], final[metric]
    table.add_row(
        "mean +- std",
        "",
        "",
        f"{100 * v['mean']:.1f} +- {100 * v['std']:.1f}",
        f"{100 * a['mean']:.1f} +- {100 * a['std']:.1f}",
        f"{100 * f['mean']:.1f} +- {100 * f['std']:.1f}",
    )
    e = final["ensemble"]
    table.caption = (
        f"ensemble of the {len(final['seeds'])} seeds on the test rows: accuracy "
        f"{100 * e['accuracy']:.1f}, macro-F1 {100 * e['macro_f1']:.1f}; "
        f"{final['total_seconds']:.0f} s"
    )
    Console().print(table)


# --- lf-summary and bench ------------------------------------------------------------------


def lf_summary_command(args: argparse.Namespace) -> int:
    from amal_jax.weak import LabelModel, format_lf_summary, lf_summary, load_weak_dataset

    ds = load_weak_dataset(args.data)
    split = getattr(ds, args.split)
    labels = np.asarray(split.y)
    has_labels = split.labelled is not None and np.asarray(split.labelled).any()
    y = np.where(np.asarray(split.labelled, bool), labels, -1) if has_labels else None
    # The label model's per-LF accuracies, fitted on the training votes alone.
    learned = LabelModel(ds.num_classes).fit(ds.train.L).accuracies_ if ds.num_lfs else None
    stats = lf_summary(
        split.L,
        y,
        lf_names=ds.lf_names,
        class_names=ds.class_names,
        learned_accuracy=learned,
    )
    records = stats.records()
    if args.csv != "-":
        print(f"{ds.name}, {args.split} split ({stats.num_rows} rows)")
        print(format_lf_summary(stats, max_rows=args.max_rows))
    if args.csv:
        for r in records:
            r["polarity"] = " ".join(ds.class_names[c] for c in r["polarity"])
        if args.csv == "-":
            run.write_csv(sys.stdout, records)
        else:
            run.write_csv(pathlib.Path(args.csv), records)
            print(f"wrote {args.csv}")
    return 0


def checkout_root() -> pathlib.Path | None:
    """The repository checkout this package was installed from (with its ``benchmarks``),
    or None for an installed copy."""
    root = pathlib.Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks" / "__main__.py").exists() else None


def bench_command(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        raise SystemExit(
            "amal-jax bench runs the benchmark suite of a checkout of the amal_jax "
            "repository, which an installed copy does not have: clone the repository and "
            "run `pip install -e '.[bench]'` in it (then amal-jax bench, or python -m benchmarks)"
        )
    suites = "speed,rules,kd" if args.suite == "all" else args.suite
    out = pathlib.Path(args.out).absolute()
    command = [sys.executable, "-m", "benchmarks", "--suites", suites, "--out", str(out)]
    command += ["--profile", args.profile]
    return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    raise SystemExit(main())
