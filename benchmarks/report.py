"""What the accuracy benchmarks' tables say: summaries, verdicts and cost lines of records.

A record is one benchmark row (a dict with ``method``, per-metric ``{"mean", "std"}``
summaries, ``seconds``, ``configs``, ...), as :mod:`benchmarks.rules` and
:mod:`benchmarks.kd` write them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def selected_record(records: Sequence[dict], selection: str) -> dict | None:
    """The ``amal_selected`` row among benchmark ``records`` (the AMAL variants of one data
    set or setting): the record with the best mean ``selection`` score, renamed
    ``amal_selected (<its method>)``, its ``configs`` those of every variant it chose among;
    None without records."""
    if not records:
        return None
    best = max(records, key=lambda r: r[selection]["mean"])
    configs = sum(r["configs"] for r in records)
    return dict(best, method=f"amal_selected ({best['method']})", configs=configs)


def summary(values: Sequence[float]) -> dict[str, float]:
    """``{"mean": .., "std": ..}`` (population std over seeds)."""
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std())}


def verdict(chosen: dict, best: dict, metric: str) -> str:
    """win / tie / loss: a win or loss needs a gap larger than the larger of the two stds."""
    a, b = chosen[metric], best[metric]
    gap, margin = a["mean"] - b["mean"], max(a["std"], b["std"])
    word = "win" if gap > margin else "loss" if gap < -margin else "tie"
    return (
        f"**{word}**: {chosen['method']} {100 * a['mean']:.1f} +- {100 * a['std']:.1f} against "
        f"the best baseline {best['method']} {100 * b['mean']:.1f} +- {100 * b['std']:.1f}"
    )


def yardstick_line(baselines: Sequence[dict], metric: str, selection: str) -> str | None:
    """The verdict rule applied to a baseline: the baseline with the best mean selection
    score (``selection``, chosen on validation as ``amal_selected`` is) against the best of
    the *other* baselines by test mean, or None with fewer than two baselines.

    The best baseline is the maximum of several noisy test means, so a method chosen on
    validation can lose to it without being worse; this line shows how often that happens
    to a baseline under the same rule.
    """
    if len(baselines) < 2:
        return None
    chosen = max(baselines, key=lambda r: r[selection]["mean"])
    best = max((r for r in baselines if r is not chosen), key=lambda r: r[metric]["mean"])
    return "the validation-chosen baseline under the same rule: " + verdict(chosen, best, metric)


def cost_against(amortised: dict, plain: dict, full: dict) -> dict[str, float]:
    """The amortised row's time against the plain baseline on the same rows and against the
    full AMAL variant, from benchmark records (``seconds``, ``compile_seconds``,
    ``configs``): ``plain_seconds`` (one configuration of the plain baseline),
    ``cost_vs_plain`` (the ratio of total seconds), ``cost_vs_plain_training`` (the ratio
    without the compilation of the step programs, the part that grows with training
    length) and ``cost_vs_full_training`` (the same against the full variant). Approximate:
    ``compile_seconds`` leaves out the small batch-gather and predict programs, and with a
    compilation cache the first run of a shape pays for later ones."""

    def training(r):  # per configuration
        return (r["seconds"] - r.get("compile_seconds", 0.0)) / r["configs"]

    plain_seconds = plain["seconds"] / plain["configs"]
    return {
        "plain_seconds": plain_seconds,
        "cost_vs_plain": amortised["seconds"] / plain_seconds,
        "cost_vs_plain_training": training(amortised) / training(plain),
        "cost_vs_full_training": training(amortised) / training(full),
    }


def amortised_line(rows: Sequence[dict], selectable: Sequence[str], metric: str) -> str | None:
    """The cost-at-equal-accuracy line of the ``amal_amortised`` row among ``rows`` (one data
    set's records), or None without one.

    The target is the best of the full AMAL variants (methods in ``selectable``) by test
    mean, reached when the amortised row's mean is within the larger of the two stds of it.
    The cost is from :func:`cost_against`, when the row has it.
    """
    amortised = next((r for r in rows if r["method"].startswith("amal_amortised")), None)
    variants = [r for r in rows if r["method"].split(" ")[0] in selectable]
    if amortised is None or not variants:
        return None
    best = max(variants, key=lambda r: r[metric]["mean"])
    a, b = amortised[metric], best[metric]
    within = a["mean"] >= b["mean"] - max(a["std"], b["std"])
    cost_text = ""
    if "cost_vs_plain" in amortised:
        cost_text = (
            f"; time {amortised['cost_vs_plain']:.2f}x the plain baseline's on the same rows "
            f"({amortised['cost_vs_plain_training']:.2f}x without compilation; the full "
            f"variant's training time x{amortised['cost_vs_full_training']:.2f})"
        )
    return (
        f"{amortised['method']} {100 * a['mean']:.1f} +- {100 * a['std']:.1f} against the best "
        f"AMAL variant {best['method']} {100 * b['mean']:.1f} +- {100 * b['std']:.1f}: "
        f"{'within' if within else 'not within'} one std{cost_text}"
    )
