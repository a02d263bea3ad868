"""Knowledge distillation: a weak student learns from (possibly noisy) labels and strong teachers.

For each setting (data set x label noise x what the teachers were trained on x number of
teachers) every method trains the same student with Adam, for several seeds at once. The
loss matrix is ``[B, 1 + M]``: cross-entropy to the (noisy) label and ``T^2 KL`` to each
teacher at temperature T = 4.

Folds. The validation split is cut into three folds, and seed ``j`` of every method selects
its epoch on fold ``j % 3`` (:func:`crossfit`, :func:`~amal_jax.recipes.harness.cross_fitted`); the
other two folds feed its look-aheads (and, for the ``+val`` methods and ``amal_trust``, are
training rows too). Every method uses the folds in the same way, and (with at least three
seeds) a method's mean selection score covers every validation row,
each scored by a model that neither trained on it nor took hypergradients from it.

Students and teachers. The student is a linear model (softmax regression) on digits and
Fashion-MNIST and a 32-unit MLP on the other data sets (``--hidden 256,256`` gives every data
set that MLP instead); the first teacher is a small CNN
(:class:`~amal_jax.distill.models.TeacherCNN`: 3x3 convolutions of 32 and 64 channels with
stride 2, a 256-unit dense layer with dropout 0.5, AdamW) whenever the features are images,
so that the teacher is clearly better than the student's own cross-entropy (both are
printed, and tabulated per setting). The image rule
(:func:`~amal_jax.distill.teachers.guess_image_shape`): digits (8x8) and Fashion-MNIST (28x28)
are images; a ``.npz`` is when it holds an ``image_shape`` entry (``[H, W]`` or
``[H, W, C]``, rows read channels last) or when its number of features is a perfect square
``s * s`` with ``s >= 8`` (read as ``s x s`` single-channel images); any other ``.npz`` gets a
512-512 MLP as its first teacher. Further teachers
(``--teachers 2`` or 3) are MLPs of 512-512 and 32 hidden units (on non-image data: 128 and
32). Budgets (CPU, 2 cores): digits 20 epochs, batch 64, Adam 1e-2; Fashion-MNIST a
stratified 10,000-image subset of its training pool (9,000 training and 1,000 validation
images; the full test set), 10 epochs, batch 128, Adam 3e-3 -- the subset keeps teacher
training and every method within the time budget, and the CNN still beats the linear student
by several points there.

What the teachers learn from (``teacher_labels``): ``"noisy"``, the same noisy training labels
the student sees (the paper's noisy-label setting), or ``"clean"``, the clean training labels
(a teacher trained elsewhere on clean data); with clean data both are the same. Teacher
logits are cached on disk (``--cache``). The default run has, on digits and Fashion-MNIST:
clean labels; 40% symmetric noise with a noisy teacher; 40% noise with a clean teacher; plus
digits at 40% noise with three noisy teachers of different quality (CNN, 512-512 MLP, 32-unit
MLP). ``--data FILE.npz`` (or a name) gets the same three variants, or, with ``--noise R``,
both teacher variants at that rate (only the clean one when R = 0).

Methods (``configs`` in each JSON row: how many configurations it tried on the selection
data; ``chosen``: which one won):

- ``ce``: cross-entropy to the label only;
- ``kd``: fixed mix ``(1 - alpha) CE + alpha KD`` (with several teachers: the average of
  their KD losses), ``alpha`` tuned over {0.1, 0.5, 0.9};
- ``l2rw``: learning to reweight over all loss columns (no hyperparameter);
- ``mwn``: Meta-Weight-Net over all loss columns, meta learning rate tuned over
  {1e-4, 1e-3, 1e-2};
- ``amal_paper``: the authors' preset scaled to the epoch budget (not tuned): a per-example
  table starting at CE 0.1 and KD 0.9 (split evenly over the teachers), head-only look-ahead,
  5 meta steps of plain gradient descent with learning rate 1500, a refresh pass after a
  warm-up and then periodically;
- ``amal_exact``: whole-network look-ahead every step, normalised hypergradient, the table
  starting from ``kd``'s tuned ``alpha``, meta learning rate 0.1 (SGD);
- ``amal_net``: a mixing network over the per-example losses (whole-network look-ahead,
  Adam 1e-3), starting at ``kd``'s tuned ``alpha``;
- ``amal_selected (<variant>)``: of ``amal_exact``, ``amal_net`` and ``amal_trust`` (three
  configurations, the budget of every tuned baseline), the one with the best mean
  selection accuracy (chosen on validation data, never on test); ``amal_paper`` is
  reported beside it;
- with validation rows as training rows: ``ce+val`` (cross-entropy on the training plus
  validation rows), ``kd+val`` (``kd`` with the validation rows as extra cross-entropy rows)
  and ``val`` (cross-entropy on the validation rows alone); and ``amal_trust``, AMAL with
  the clean rows used both ways: the other two folds' rows at half of every batch (their own
  column, weight 1) and as hypergradient rows, the label and teacher columns mixed by
  :func:`amal_jax.trust_table` starting at ``kd``'s tuned mix (not tuned further). The
  other AMAL variants spend the validation labels on hypergradients only.
- ``amal_amortised (<variant>, meta every 5)``: after ``amal_selected``, the variant it
  chose again with a meta update every 5th step, with its seconds against one configuration
  of the plain baseline on the same rows (``cost_vs_plain``: ``kd``, or ``kd+val`` for the
  cross-fitted ``amal_trust``).

The AMAL variants start from ``kd``'s tuned alpha (``chosen``: ``init_alpha``).

Every tuned method tries ``CONFIGS`` = 3 configurations. New methods are one entry in
``METHOD_FUNCTIONS`` (a function of a :class:`Context` returning an :class:`Outcome`);
:func:`crossfit` is the fold loop of every method.

Each harness run compiles its own programs; runs of equal shapes compile the same ones, so
JAX's persistent compilation cache (``--compile-cache``, default ``.cache/jax``) is switched
on: compilation dominates the digits runs, and with the cache each distinct program is
compiled once. The ``seconds`` column therefore includes compilation only where a program
was new (the first setting of each shape pays for the rest).

Run ``python -m benchmarks.kd --help`` (from the repository root).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from amal_jax.distill import teachers
from amal_jax.recipes.distill import (
    MAX_TEACHERS,
    META_LR,
    TEACHER_LABELS,
    KDData,
    Setting,
    prepare,
    recipe,
    settings_for,
)
from amal_jax.recipes.harness import Result, Settings, compilation_cache, parse_hidden, tuned
from amal_jax.recipes.rules import Recipe
from benchmarks.environment import environment, environment_line
from benchmarks.report import (
    amortised_line,
    cost_against,
    selected_record,
    summary,
    verdict,
    yardstick_line,
)

CONFIGS = 3  # configurations every tuned method tries on the selection data
ALPHAS = (0.1, 0.5, 0.9)  # kd / kd+val: weight of the distillation loss
MWN_LRS = (1e-4, 1e-3, 1e-2)  # Meta-Weight-Net's meta learning rate (Adam)
# The AMAL variants' meta learning rates, fixed (the middle of the grids the earlier runs
# tuned over): amal_selected's three candidates are its CONFIGS configurations.
AMAL_META_LR = 0.1  # amal_exact (SGD on the normalised hypergradient)
NET_META_LR = 1e-3  # amal_net (Adam)
# amal_selected chooses among these (amal_paper, the authors' preset, is reported beside).
SELECTABLE = ("amal_exact", "amal_net", "amal_trust")
for _grid in (ALPHAS, MWN_LRS, SELECTABLE):
    assert len(_grid) == CONFIGS, "every tuned method tries the same number of configurations"


DEFAULT_SETTINGS = (
    Setting("digits", 0.0, 1, "clean"),
    Setting("digits", 0.4, 1, "noisy"),
    Setting("digits", 0.4, 1, "clean"),
    Setting("digits", 0.4, 3, "noisy"),
    Setting("fashion_mnist", 0.0, 1, "clean"),
    Setting("fashion_mnist", 0.4, 1, "noisy"),
    Setting("fashion_mnist", 0.4, 1, "clean"),
)


@dataclasses.dataclass
class Outcome:
    """A method's result, how many configurations it tried and which it chose."""

    result: Result
    configs: int = 1
    chosen: Any = None  # e.g. {"alpha": 0.5} (None: nothing was chosen)


@dataclasses.dataclass
class Context:
    """Everything a method function needs; ``shared`` passes results between methods."""

    kd: KDData
    setting: Setting
    seeds: list[int]
    settings: Settings
    shared: dict = dataclasses.field(default_factory=dict)

    @property
    def columns(self) -> int:
        return 1 + self.setting.teachers


def crossfit(name: str, ctx: Context, candidates: Sequence[tuple[dict, Recipe]]) -> Outcome:
    """Every method's fold loop and tuning: each candidate recipe runs over rotating folds.

    Seed ``j`` selects its epoch on validation fold ``j % 3`` (the other folds are look-ahead
    rows, and for the ``+val`` methods extra training rows;
    :func:`~amal_jax.recipes.harness.cross_fitted`). The candidate with the best mean
    selection score wins (never test; :func:`~amal_jax.recipes.harness.tuned`).
    """
    t0 = time.perf_counter()
    runs = [r.run(ctx.settings, ctx.seeds) for _, r in candidates]
    many = len(candidates) > 1
    labels = [", ".join(f"{k}={v}" for k, v in c.items()) if many else "" for c, _ in candidates]
    best, result = tuned(name, runs, labels, time.perf_counter() - t0)
    chosen = candidates[best][0]
    return Outcome(result, configs=len(candidates), chosen=chosen or None)


def _recipe(ctx: Context, method: str, **knobs) -> Recipe:
    return recipe(ctx.kd, method, epochs=ctx.settings.epochs, **knobs)


def _single(ctx: Context, method: str) -> Outcome:
    return crossfit(method, ctx, [({}, _recipe(ctx, method))])


def _alpha_grid(ctx: Context, method: str) -> Outcome:
    candidates = [({"alpha": a}, _recipe(ctx, method, alpha=a)) for a in ALPHAS]
    return crossfit(method, ctx, candidates)


def _kd_grid(ctx: Context) -> Outcome:
    """``kd``'s alpha grid, run once per setting (the AMAL variants start from its alpha)."""
    if "kd" not in ctx.shared:
        ctx.shared["kd"] = _alpha_grid(ctx, "kd")
    return ctx.shared["kd"]


def _tuned_alpha(ctx: Context) -> float:
    return _kd_grid(ctx).chosen["alpha"]


def run_ce(ctx: Context) -> Outcome:
    return _single(ctx, "ce")


def run_kd(ctx: Context) -> Outcome:
    return _kd_grid(ctx)


def run_l2rw(ctx: Context) -> Outcome:
    return _single(ctx, "l2rw")


def run_mwn(ctx: Context) -> Outcome:
    candidates = [({"meta_lr": lr}, _recipe(ctx, "mwn", meta_lr=lr)) for lr in MWN_LRS]
    return crossfit("mwn", ctx, candidates)


def run_amal_paper(ctx: Context) -> Outcome:
    return _single(ctx, "amal_paper")


def _amal_from_kd(ctx: Context, name: str, meta_every: int) -> Outcome:
    """An AMAL variant starting from ``kd``'s tuned alpha (``chosen`` records it)."""
    alpha = _tuned_alpha(ctx)
    lr = {"amal_exact": AMAL_META_LR, "amal_net": NET_META_LR}.get(name, META_LR[name])
    r = _recipe(ctx, name, alpha=alpha, meta_lr=lr, meta_every=meta_every)
    out = crossfit(name, ctx, [({}, r)])
    out.chosen = {"init_alpha": alpha}
    return out


def run_amal_exact(ctx: Context, meta_every: int = 1) -> Outcome:
    return _amal_from_kd(ctx, "amal_exact", meta_every)


def run_amal_net(ctx: Context, meta_every: int = 1) -> Outcome:
    return _amal_from_kd(ctx, "amal_net", meta_every)


def run_ce_val(ctx: Context) -> Outcome:
    return _single(ctx, "ce+val")


def run_kd_val(ctx: Context) -> Outcome:
    return _alpha_grid(ctx, "kd+val")


def run_val(ctx: Context) -> Outcome:
    return _single(ctx, "val")


def run_amal_trust(ctx: Context, meta_every: int = 1) -> Outcome:
    """Clean rows both ways: the other folds' validation rows at half of every batch (their
    own column, weight 1) and as hypergradient rows; the label and teacher columns mixed by
    a trust per column (starting at kd's tuned mix) times a per-example correction."""
    return _amal_from_kd(ctx, "amal_trust", meta_every)


# Run in this order; "kd" before the AMAL variants that start from its alpha.
METHOD_FUNCTIONS: dict[str, Callable[[Context], Outcome]] = {
    "ce": run_ce,
    "kd": run_kd,
    "l2rw": run_l2rw,
    "mwn": run_mwn,
    "amal_paper": run_amal_paper,
    "amal_exact": run_amal_exact,
    "amal_net": run_amal_net,
    "ce+val": run_ce_val,
    "kd+val": run_kd_val,
    "val": run_val,
    "amal_trust": run_amal_trust,
}
# "amal_amortised": after amal_selected, the selected variant again with a meta update
# every AMORTISED_EVERY steps; its cost reference is one configuration of the plain
# baseline on the same rows (PLAIN_REFERENCE).
AMORTISED_EVERY = 5
PLAIN_REFERENCE = {"amal_exact": "kd", "amal_net": "kd", "amal_trust": "kd+val"}
METHODS = (*METHOD_FUNCTIONS, "amal_amortised")


def run_setting(ctx: Context, methods, log) -> dict[str, Outcome]:
    """Runs ``methods`` (in :data:`METHOD_FUNCTIONS` order); ``log(setting, outcome)`` each."""
    outcomes: dict[str, Outcome] = {}
    for method in METHOD_FUNCTIONS:
        if method not in methods:
            continue
        outcomes[method] = METHOD_FUNCTIONS[method](ctx)
        log(ctx.setting, outcomes[method])
    return outcomes


def amortised_record(ctx: Context, chosen: dict, records: list[dict]) -> dict:
    """``amal_amortised (<variant>, meta every 5)``: the variant ``amal_selected`` chose, with
    a meta update every :data:`AMORTISED_EVERY` steps, and its seconds against one
    configuration of the plain baseline on the same rows (``cost_vs_plain``)."""
    variant = chosen["method"][len("amal_selected (") : -1]
    full = next(r for r in records if r["method"] == variant)
    base = variant.split(" ")[0]
    outcome = METHOD_FUNCTIONS[base](ctx, meta_every=AMORTISED_EVERY)
    rec = record(ctx.setting, outcome)
    rec["method"] = f"amal_amortised ({base}, meta every {AMORTISED_EVERY})"
    rec["full_seconds"] = full["seconds"]
    plain = [r for r in records if r["method"].split(" ")[0] == PLAIN_REFERENCE[base]]
    if plain:
        rec.update(cost_against(rec, plain[0], full))
    return rec


def select_amal(records: list[dict]) -> dict | None:
    """The ``amal_selected`` row: the AMAL record with the best mean selection accuracy."""
    amal = [r for r in records if r["method"].split(" ")[0] in SELECTABLE]
    # Like for like: every candidate is rotated over the folds, so its selection score
    # covers every validation row, each scored by a model that did not use it. Its tuning
    # budget is every configuration of every variant it chose among (CONFIGS).
    return selected_record(amal, "selection_accuracy")


def record(setting: Setting, outcome: Outcome) -> dict:
    r = outcome.result
    return {
        "setting": dataclasses.asdict(setting),
        "method": r.method,
        "accuracy": summary(r.accuracy),
        "macro_f1": summary(r.macro_f1),
        "selection_accuracy": summary(r.selection),
        "folds": r.folds,
        "seconds": r.seconds,
        "compile_seconds": r.compile_seconds,
        "configs": outcome.configs,
        "chosen": outcome.chosen,
        "per_seed": {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "best_epoch": r.best_epoch},
    }


def _setting_cells(s: dict) -> str:
    return f"{s['data']} | {s['noise']:.0%} | {s['teacher_labels']} | {s['teachers']}"


def markdown(
    records: list[dict], teacher_rows: list[dict], seeds: int, hidden: tuple[int, ...] | None = None
) -> str:
    student = (
        "each data set's own (see `python -m benchmarks.kd --help`)"
        if hidden is None
        else f"MLP {'-'.join(map(str, hidden)) or 'linear'} on every data set (--hidden)"
    )
    lines = [
        f"## Knowledge distillation: test accuracy (%), mean +- std over {seeds} seeds",
        "",
        environment_line(environment()),
        "",
        f"Student: {student}.",
        "",
        "| data | noise | teacher labels | teachers | method | accuracy | macro-F1 | "
        "selection acc | configs | seconds | compile s |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        a, f = r["accuracy"], r["macro_f1"]
        lines.append(
            f"| {_setting_cells(r['setting'])} | {r['method']} | "
            f"{100 * a['mean']:.1f} +- {100 * a['std']:.1f} | "
            f"{100 * f['mean']:.1f} +- {100 * f['std']:.1f} | "
            f"{100 * r['selection_accuracy']['mean']:.1f} | {r['configs']} | "
            f"{r['seconds']:.0f} | {r.get('compile_seconds', 0.0):.0f} |"
        )
    lines += ["", *verdicts(records)]
    lines += [
        "",
        "Teachers against the student's own cross-entropy (test accuracy, %; teacher logits "
        "cached):",
        "",
        "| data | noise | teacher labels | teachers | teacher | teacher acc | student ce acc "
        "| gap |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for t in teacher_rows:
        ce = t.get("student_ce")
        ce_cell = "" if ce is None else f"{100 * ce:.1f}"
        gap = "" if ce is None else f"{100 * (t['accuracy'] - ce):+.1f}"
        lines.append(
            f"| {_setting_cells(t['setting'])} | {t['teacher']} | {100 * t['accuracy']:.1f} | "
            f"{ce_cell} | {gap} |"
        )
    return "\n".join(lines) + "\n"


def verdicts(records: list[dict]) -> list[str]:
    """Per setting: ``amal_selected`` against the best baseline (by test mean), the same rule
    applied to the validation-chosen baseline (:func:`yardstick_line`), and the amortised
    row's line."""
    lines = []
    keys = {json.dumps(r["setting"], sort_keys=True): r["setting"] for r in records}
    for key, setting in keys.items():
        rows = [r for r in records if json.dumps(r["setting"], sort_keys=True) == key]
        chosen = [r for r in rows if r["method"].startswith("amal_selected")]
        base = [r for r in rows if not r["method"].startswith("amal")]
        if chosen and base:
            best = max(base, key=lambda r: r["accuracy"]["mean"])
            cells = _setting_cells(setting).replace(" | ", ", ")
            lines.append(f"- {cells}: " + verdict(chosen[0], best, "accuracy"))
            yardstick = yardstick_line(base, "accuracy", "selection_accuracy")
            if yardstick is not None:
                lines.append(f"- {cells}, {yardstick}")
            line = amortised_line(rows, SELECTABLE, "accuracy")
            if line is not None:
                lines.append(f"- {cells}, amortised: " + line)
    return lines


def describe(config: teachers.TeacherConfig) -> str:
    """``cnn 32-64 / 256`` or ``mlp 512-512`` (``mlp linear`` for no hidden layer)."""
    dense = "-".join(map(str, config.hidden)) or "linear"
    if config.kind == "cnn":
        return f"cnn {'-'.join(map(str, config.conv))} / {dense}"
    return f"mlp {dense}"


def teacher_variants(noise: float, requested: str | None) -> list[str]:
    if requested is not None:
        return [requested]
    return ["clean"] if noise == 0 else ["noisy", "clean"]


def parse_settings(args) -> list[Setting]:
    if not (args.data or args.noise is not None or args.teachers or args.teacher_labels):
        return list(DEFAULT_SETTINGS)
    data = args.data or ["digits"]
    noises = [args.noise] if args.noise is not None else [0.0, 0.4]
    count = args.teachers or 1
    settings = []
    for d in data:
        for n in noises:
            for labels in teacher_variants(n, args.teacher_labels):
                s = Setting(d, n, count, labels)
                if s not in settings:
                    settings.append(s)
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; ``args.methods`` is a list."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        action="append",
        help="digits, fashion_mnist, synthetic or a .npz path; repeatable",
    )
    parser.add_argument("--noise", type=float, help="symmetric label-noise rate (default 0, 0.4)")
    parser.add_argument(
        "--teacher-labels",
        choices=TEACHER_LABELS,
        help="what the teachers learn from (default: both where the labels are noisy)",
    )
    parser.add_argument("--teachers", type=int, help=f"number of teachers, 1..{MAX_TEACHERS}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {METHODS}")
    parser.add_argument("--epochs", type=int, help="override the per-data-set epoch budget")
    parser.add_argument(
        "--hidden",
        type=parse_hidden,
        help="the student MLP's hidden layers, e.g. 256,256, in place of each data set's "
        "('linear' for none)",
    )
    parser.add_argument("--out", default="results/kd")
    parser.add_argument("--cache", default=".cache/teachers", help="teacher logits cache")
    parser.add_argument(
        "--compile-cache",
        default=".cache/jax",
        help="JAX's persistent compilation cache ('' leaves JAX's setting alone)",
    )
    parser.add_argument("--plot", action="store_true", help="write the insight plots (PNG)")
    args = parser.parse_args(argv)
    args.methods = methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.teachers is not None and not 1 <= args.teachers <= MAX_TEACHERS:
        raise SystemExit(f"--teachers must be between 1 and {MAX_TEACHERS}")
    if args.noise is not None and not (math.isfinite(args.noise) and 0 <= args.noise <= 1):
        raise SystemExit("--noise must lie in [0, 1]")
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    with compilation_cache(args.compile_cache):
        return _run(args)


def _run(args: argparse.Namespace) -> list[dict]:
    methods = args.methods
    seeds = list(range(args.seeds))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, teacher_rows, insights = [], [], []
    start = time.perf_counter()

    def log(setting, outcome):
        rec = record(setting, outcome)
        records.append(rec)
        _print(setting, rec)
        _write(out, records, teacher_rows, len(seeds), args.hidden)

    for setting in parse_settings(args):
        try:
            kd = prepare(setting, args.cache)
        except FileNotFoundError as err:
            print(f"skipping {setting}: {err}", flush=True)
            continue
        rows = []
        for t in kd.teacher_logits:
            rows.append(
                {
                    "setting": dataclasses.asdict(setting),
                    "teacher": describe(t.config),
                    "accuracy": t.test_accuracy,
                    "seconds": t.train_seconds,
                    "from_cache": t.from_cache,
                }
            )
            cached = "cached" if t.from_cache else f"trained in {t.train_seconds:.0f} s"
            print(
                f"{setting.label}: teacher {describe(t.config)} test acc "
                f"{100 * t.test_accuracy:.1f} ({cached})",
                flush=True,
            )
        teacher_rows.extend(rows)
        settings = settings_for(setting.data, args.epochs, args.hidden)
        ctx = Context(kd, setting, seeds, settings)
        outcomes = run_setting(ctx, methods, log)
        if "ce" in outcomes:
            ce = float(np.mean(outcomes["ce"].result.accuracy))
            for row in rows:
                row["student_ce"] = ce
            print(
                f"{setting.label}: student ce {100 * ce:.1f} against teacher(s) "
                + ", ".join(f"{100 * r['accuracy']:.1f}" for r in rows),
                flush=True,
            )
        same = [r for r in records if r["setting"] == dataclasses.asdict(setting)]
        chosen = select_amal(same)
        if chosen is not None:
            records.append(chosen)
            _print(setting, chosen)
            if "amal_amortised" in methods:
                records.append(amortised_record(ctx, chosen, same))
                _print(setting, records[-1])
        _write(out, records, teacher_rows, len(seeds), args.hidden)
        if args.plot and "amal_exact" in outcomes:
            insights.append((setting, kd, outcomes["amal_exact"].result))
    print()
    print(markdown(records, teacher_rows, len(seeds), args.hidden))
    if args.plot and insights:
        from benchmarks import kd_plots

        for path in kd_plots.plot_insights(insights, out):
            print(f"wrote {path}")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return records


def _print(setting: Setting, rec: dict) -> None:
    a = rec["accuracy"]
    print(
        f"{setting.label}  {rec['method']:28s} acc {100 * a['mean']:5.1f} +- "
        f"{100 * a['std']:4.1f}  configs {rec['configs']}  ({rec['seconds']:.0f} s)",
        flush=True,
    )


def _write(out, records, teacher_rows, seeds, hidden=None) -> None:
    (out / "kd.json").write_text(json.dumps(records, indent=1))
    (out / "kd.md").write_text(markdown(records, teacher_rows, seeds, hidden))
    (out / "kd_teachers.json").write_text(json.dumps(teacher_rows, indent=1))


if __name__ == "__main__":
    main()
