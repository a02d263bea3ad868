"""Insight plots for the distillation benchmark (matplotlib, an optional extra).

For each setting with an ``amal_exact`` run it writes one PNG with two panels:

- the learned distillation weight of every training example (table column 1, averaged over
  seeds) against the teacher's probability of the example's true label, clean-label rows
  and flipped-label rows in two colours;
- the mean label (CE) and distillation weights over the epochs, for clean and for flipped
  rows.
"""

from __future__ import annotations

import pathlib

import numpy as np

from amal_jax.distill.teachers import softmax


def plot_insights(insights, out: pathlib.Path) -> list[pathlib.Path]:
    """Writes ``kd_insight_<data>_<noise>_<teachers>_<teacher labels>.png`` per
    ``(setting, kd, result)``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'amal_jax[plots]'") from None
    paths = []
    for setting, kd, result in insights:
        data = kd.data
        # Rotated runs: one entry per fold, the same training rows; all seeds together.
        table = np.concatenate([np.asarray(w) for w in result.final_weights])  # [S, N, K]
        kd_weight = table[:, : len(data.y_train), 1].mean(axis=0)
        p_true = softmax(kd.teacher_logits[0].train)[
            np.arange(len(data.y_train)), data.y_train_clean
        ]
        noisy = np.asarray(data.noisy_mask, bool)
        history = np.concatenate([np.asarray(h) for h in result.weight_history], axis=1)
        # [E, S, N, K]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for mask, label, colour in (
            (~noisy, "clean label", "tab:blue"),
            (noisy, "flipped label", "tab:red"),
        ):
            if mask.any():
                left.scatter(
                    p_true[mask],
                    kd_weight[mask],
                    s=4,
                    alpha=0.4,
                    c=colour,
                    label=f"{label} ({mask.sum()})",
                )
        left.set_xlabel("teacher probability of the true label")
        left.set_ylabel("learned distillation weight")
        left.set_title("per-example KD weight after training")
        left.legend(loc="best", markerscale=3)
        epochs = np.arange(1, history.shape[0] + 1)
        for mask, label, style in ((~noisy, "clean", "-"), (noisy, "flipped", "--")):
            if not mask.any():
                continue
            rows = history[:, :, : len(data.y_train)][:, :, mask]
            right.plot(
                epochs,
                rows[..., 0].mean(axis=(1, 2)),
                style,
                c="tab:green",
                label=f"CE weight, {label} rows",
            )
            right.plot(
                epochs,
                rows[..., 1].mean(axis=(1, 2)),
                style,
                c="tab:purple",
                label=f"KD weight, {label} rows",
            )
        right.set_xlabel("epoch")
        right.set_ylabel("mean weight")
        right.set_title("weights over training")
        right.legend(loc="best", fontsize=8)
        fig.suptitle(
            f"{setting.data}, {setting.noise:.0%} label noise, "
            f"{setting.teachers} teacher(s) trained on {setting.teacher_labels} labels: "
            "AMAL exact"
        )
        fig.tight_layout()
        path = (
            out / f"kd_insight_{pathlib.Path(setting.data).stem}_{int(100 * setting.noise)}_"
            f"{setting.teachers}_{setting.teacher_labels}.png"
        )
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
