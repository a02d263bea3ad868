"""Knowledge distillation: a student learns from (possibly noisy) labels and from teachers.

For each setting (data set x label noise x number of teachers) every method trains the same
student MLP with Adam, for several seeds at once, and is selected at its best epoch by
accuracy on a part of the validation set that produces no hypergradients. The loss matrix is
``[B, 1 + M]``: cross-entropy to the (noisy) label and ``T^2 KL`` to each teacher at
temperature T = 4. Teachers (MLPs of different sizes) are trained once on the noisy labels
and their logits cached on disk. Methods:

- ``ce``: cross-entropy to the label only;
- ``kd``: fixed mix ``(1 - alpha) CE + alpha KD`` (with several teachers: the average of
  their KD losses), ``alpha`` tuned on the selection data over {0.1, 0.5, 0.9};
- ``l2rw`` / ``mwn``: learning to reweight / Meta-Weight-Net over all loss columns;
- ``amal_paper``: the authors' preset scaled to the epoch budget: a per-example table
  starting at CE 0.1 and KD 0.9 (split evenly over the teachers), head-only look-ahead,
  5 meta steps of plain gradient descent with learning rate 1500, a refresh pass after a
  warm-up and then periodically;
- ``amal_exact``: whole-network look-ahead every step, normalised hypergradient, the table
  starting from the tuned ``alpha``, the meta learning rate tuned on the selection data over
  {0.03, 0.1, 0.3};
- ``amal_net``: a mixing network over the per-example losses (whole-network look-ahead),
  starting at the tuned ``alpha`` when ``kd`` or ``amal_exact`` ran, else at 0.5;
- ``ce+val``: cross-entropy with the validation labels as extra training data,
  cross-fitted over three folds (AMAL consumes those labels through its hypergradient).

Run ``python benchmarks/kd.py --help``.
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

from amal_jax.data import classification, teachers
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

METHODS = ("ce", "kd", "l2rw", "mwn", "amal_paper", "amal_exact", "amal_net", "ce+val")
ALPHAS = (0.1, 0.5, 0.9)
TEMPERATURE = 4.0
FOLDS = 3
TEACHER_SIZES = ((512, 512), (128,), (32,))


@dataclasses.dataclass(frozen=True)
class Setting:
    data: str
    noise: float
    teachers: int


# Student and training budget per data set (CPU, 2 cores).
BUDGET = {
    "digits": dict(hidden=(32,), epochs=40, max_train=None),
    "fashion_mnist": dict(hidden=(32,), epochs=15, max_train=None),
    "synthetic": dict(hidden=(32,), epochs=40, max_train=None),
}
META_LRS = (0.03, 0.1, 0.3)  # amal_exact's meta learning rate, tuned like kd's alpha
DEFAULT_SETTINGS = (
    Setting("digits", 0.0, 1),
    Setting("digits", 0.4, 1),
    Setting("digits", 0.0, 3),
    Setting("digits", 0.4, 3),
    Setting("fashion_mnist", 0.0, 1),
    Setting("fashion_mnist", 0.4, 1),
    Setting("synthetic", 0.4, 1),
)


@dataclasses.dataclass(frozen=True)
class KDData:
    data: classification.ClassificationData
    teacher_logits: tuple[teachers.TeacherLogits, ...]
    folds: tuple[np.ndarray, ...]


def prepare(setting: Setting, cache_dir: str) -> KDData:
    options = {}
    budget = BUDGET.get(setting.data, BUDGET["synthetic"])
    if setting.data == "fashion_mnist" and budget["max_train"]:
        options["max_train"] = budget["max_train"]
    data = classification.load_classification(
        setting.data, seed=0, noise_rate=setting.noise, **options
    )
    configs = [
        teachers.TeacherConfig(hidden=TEACHER_SIZES[i], epochs=5 if i == 0 else 10, seed=i)
        for i in range(setting.teachers)
    ]
    logits = teachers.train_teachers(data, configs, cache_dir=cache_dir)
    order = np.random.default_rng(0).permutation(len(data.y_val))
    return KDData(data, logits, tuple(np.sort(f) for f in np.array_split(order, FOLDS)))


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = z / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def problem(kd: KDData, *, columns: int, sel, meta, extra=None) -> Problem:
    """Columns: 0 = CE to the label; 1..M = KD to each teacher (``columns = 1 + M``)."""
    d = kd.data
    eye = np.eye(d.num_classes, dtype=np.float32)
    targets = [eye[d.y_train][:, None]]
    for t in kd.teacher_logits[: columns - 1]:
        targets.append(_softmax(t.train, TEMPERATURE)[:, None])
    t = np.concatenate(targets, axis=1)
    m = np.ones(t.shape[:2], np.float32)
    x = d.x_train
    if extra is not None:
        x, t, m = append_gold_rows(x, t, m, d.x_val[extra], d.y_val[extra], d.num_classes)
    return Problem(
        name=d.name,
        x_train=x,
        targets=t,
        mask=m,
        temperatures=(1.0,) + (TEMPERATURE,) * (columns - 1),
        columns=("ce", *tuple(f"kd{j}" for j in range(columns - 1))),
        x_meta=d.x_val[meta],
        y_meta=d.y_val[meta],
        x_sel=d.x_val[sel],
        y_sel=d.y_val[sel],
        x_test=d.x_test,
        y_test=d.y_test,
        num_classes=d.num_classes,
    )


def _mix(alpha: float, teachers_: int) -> tuple[float, ...]:
    return (1.0 - alpha,) + (alpha / teachers_,) * teachers_


def run_setting(kd: KDData, setting: Setting, methods, seeds, settings: Settings, log):
    f = kd.folds
    sel, meta = f[0], np.concatenate(f[1:])
    k = 1 + setting.teachers
    full = problem(kd, columns=k, sel=sel, meta=meta)
    results: dict[str, Result] = {}
    tuned_alpha = None
    if "kd" in methods or "amal_exact" in methods:
        t0 = time.perf_counter()
        runs = [
            train(
                full,
                Method(f"kd a={a}", "fixed", weights=_mix(a, setting.teachers)),
                settings,
                seeds,
            )
            for a in ALPHAS
        ]
        best = max(range(len(ALPHAS)), key=lambda i: np.mean(runs[i].selection))
        tuned_alpha = ALPHAS[best]
        if "kd" in methods:
            results["kd"] = dataclasses.replace(
                runs[best],
                method=f"kd (alpha={tuned_alpha})",
                seconds=time.perf_counter() - t0,
            )
    epochs = settings.epochs
    for method in methods:
        if method == "kd":
            pass
        elif method == "ce":
            p = problem(kd, columns=1, sel=sel, meta=meta)
            results[method] = train(p, Method(method, "fixed", weights=(1.0,)), settings, seeds)
        elif method in ("l2rw", "mwn"):
            results[method] = train(full, Method(method, method, meta_lr=1e-3), settings, seeds)
        elif method == "amal_paper":
            phase = max(1, epochs // 5)
            m = Method(
                method,
                "amal",
                weights=_mix(0.9, setting.teachers),
                meta_lr=1500.0,
                normalize=False,
                meta_steps=5,
                refresh_every=phase,
                warmup_epochs=phase,
                head_only=True,
            )
            results[method] = train(full, m, settings, seeds)
        elif method == "amal_exact":
            # The meta learning rate is tuned on the selection data, as kd's alpha is.
            t0 = time.perf_counter()
            runs = [
                train(
                    full,
                    Method(method, "amal", weights=_mix(tuned_alpha, setting.teachers), meta_lr=lr),
                    settings,
                    seeds,
                )
                for lr in META_LRS
            ]
            best = max(range(len(META_LRS)), key=lambda i: np.mean(runs[i].selection))
            results[method] = dataclasses.replace(
                runs[best],
                method=f"amal_exact (meta lr={META_LRS[best]})",
                seconds=time.perf_counter() - t0,
            )
        elif method == "amal_net":
            m = Method(
                method,
                "amal",
                weights=_mix(tuned_alpha or 0.5, setting.teachers),
                mixer="network",
                meta_lr=1e-3,
                meta_optimizer="adam",
            )
            results[method] = train(full, m, settings, seeds)
        elif method == "ce+val":
            t0 = time.perf_counter()
            folds = []
            for i in range(FOLDS):
                rest = np.concatenate([f[j] for j in range(FOLDS) if j != i])
                p = problem(kd, columns=1, sel=f[i], meta=rest, extra=rest)
                folds.append(train(p, Method(method, "fixed", weights=(1.0,)), settings, seeds))
            results[method] = combine_folds(method, folds, time.perf_counter() - t0)
        if method in results:
            log(setting, results[method])
    return results


def record(setting: Setting, r: Result) -> dict:
    return {
        "setting": dataclasses.asdict(setting),
        "method": r.method,
        "accuracy": summary(r.accuracy),
        "selection_accuracy": summary(r.selection),
        "seconds": r.seconds,
        "per_seed": {"accuracy": r.accuracy, "best_epoch": r.best_epoch},
    }


def markdown(records: list[dict], teacher_rows: list[dict], seeds: int) -> str:
    lines = [
        f"## Knowledge distillation: test accuracy (%), mean +- std over {seeds} seeds",
        "",
        "| data | noise | teachers | method | accuracy | selection acc | seconds |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        s, a = r["setting"], r["accuracy"]
        lines.append(
            f"| {s['data']} | {s['noise']:.0%} | {s['teachers']} | {r['method']} | "
            f"{100 * a['mean']:.1f} +- {100 * a['std']:.1f} | "
            f"{100 * r['selection_accuracy']['mean']:.1f} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Teachers (trained on the noisy labels, cached):",
        "",
        "| data | noise | teacher | test accuracy |",
        "|---|---:|---|---:|",
    ]
    for t in teacher_rows:
        lines.append(
            f"| {t['data']} | {t['noise']:.0%} | {t['hidden']} | {100 * t['accuracy']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_settings(args) -> list[Setting]:
    if not (args.data or args.noise is not None or args.teachers):
        return list(DEFAULT_SETTINGS)
    data = args.data or ["digits"]
    noises = [args.noise] if args.noise is not None else [0.0, 0.4]
    counts = [args.teachers] if args.teachers else [1]
    return [Setting(d, n, t) for d in data for n in noises for t in counts]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        action="append",
        help="digits, fashion_mnist, synthetic or a .npz path; repeatable",
    )
    parser.add_argument("--noise", type=float, help="symmetric label-noise rate (default 0, 0.4)")
    parser.add_argument("--teachers", type=int, help="number of teachers (default 1)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {METHODS}")
    parser.add_argument("--epochs", type=int, help="override the per-data-set epoch budget")
    parser.add_argument("--out", default="results/kd")
    parser.add_argument("--cache", default=".cache/teachers", help="teacher logits cache")
    parser.add_argument("--plot", action="store_true", help="write the insight plots (PNG)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.teachers is not None and not 1 <= args.teachers <= len(TEACHER_SIZES):
        raise SystemExit(f"--teachers must be between 1 and {len(TEACHER_SIZES)}")
    seeds = list(range(args.seeds))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, teacher_rows, insights = [], [], []

    def log(setting, r):
        rec = record(setting, r)
        records.append(rec)
        a = rec["accuracy"]
        print(
            f"{setting.data:13s} noise {setting.noise:.0%} teachers {setting.teachers}  "
            f"{r.method:20s} acc {100 * a['mean']:5.1f} +- {100 * a['std']:4.1f}  "
            f"({r.seconds:.0f} s)",
            flush=True,
        )
        _write(out, records, teacher_rows, len(seeds))

    for setting in parse_settings(args):
        try:
            kd = prepare(setting, args.cache)
        except FileNotFoundError as err:
            print(f"skipping {setting}: {err}", flush=True)
            continue
        for t in kd.teacher_logits:
            teacher_rows.append(
                {
                    "data": setting.data,
                    "noise": setting.noise,
                    "hidden": list(t.config.hidden),
                    "accuracy": t.test_accuracy,
                }
            )
        budget = BUDGET.get(setting.data, BUDGET["synthetic"])
        settings = Settings(
            hidden=budget["hidden"],
            epochs=args.epochs or budget["epochs"],
            select_metric="accuracy",
        )
        results = run_setting(kd, setting, methods, seeds, settings, log)
        if args.plot and "amal_exact" in results:
            insights.append((setting, kd, results["amal_exact"]))
    print()
    print(markdown(records, teacher_rows, len(seeds)))
    if args.plot and insights:
        from benchmarks import kd_plots

        for path in kd_plots.plot_insights(insights, out):
            print(f"wrote {path}")
    return records


def _write(out, records, teacher_rows, seeds) -> None:
    (out / "kd.json").write_text(json.dumps(records, indent=1))
    (out / "kd.md").write_text(markdown(records, teacher_rows, seeds))


if __name__ == "__main__":
    main()
