"""One ``amal-jax rules`` / ``amal-jax kd`` run: training with progress, metrics and
checkpoints, then the files of its output directory.

A method's recipe runs over the validation folds (seed ``j`` selects on fold ``j % 3``):
one harness run per fold, each training its seeds at once. Every fold's run has a
:class:`FoldMonitor`, which after each epoch saves a checkpoint
(``checkpoints/run<fold>/``), then appends the epoch's line to ``metrics.jsonl`` and moves
the progress bar; a resumed run restores the latest checkpoint of each fold (a finished
fold's last one, so it is not trained again) and continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from amal_jax.cli.checkpoints import Checkpoints
from amal_jax.recipes.harness import (
    EpochReport,
    Monitor,
    Result,
    RunInfo,
    Settings,
    Snapshot,
    macro_f1,
)
from amal_jax.recipes.rules import Recipe

METRICS = "metrics.jsonl"
HISTOGRAM_BINS = 20


@dataclasses.dataclass
class FoldOutputs:
    """What one fold's run leaves for the output files.

    ``probabilities``: per prediction split, ``[S, n, C]`` class probabilities of each
    seed's best-epoch model; ``weights``: ``[S, N, K]`` every training row's weights at
    the end of training (None for a method that keeps none), on the rows ``row_ids`` with
    loss columns ``columns`` and ``mask`` ``[N, K]`` (which columns apply to which row);
    ``trust``: ``[S, K]`` the trust mixer's learned trust per column (None otherwise).
    """

    fold: int
    seeds: tuple[int, ...]
    probabilities: dict[str, np.ndarray]
    weights: np.ndarray | None
    row_ids: np.ndarray
    columns: tuple[str, ...]
    mask: np.ndarray
    trust: np.ndarray | None
    steps_per_epoch: int


def weight_statistics(weights: np.ndarray, mask: np.ndarray, columns: Sequence[str]) -> dict:
    """Per loss column, over the rows it applies to: per-seed mean, std, min and max of the
    weights ``[S, N, K]``, and a histogram pooled over seeds (``edges``, ``counts``)."""
    out = {}
    for k, name in enumerate(columns):
        rows = mask[:, k] > 0
        w = weights[:, rows, k].astype(np.float64)
        if w.size == 0:
            out[name] = {"rows": 0}
            continue
        lo, hi = float(w.min()), float(w.max())
        if hi - lo < 1e-6:  # a constant weight: a narrow range around it
            lo, hi = lo - 0.05, hi + 0.05
        counts, edges = np.histogram(w.ravel(), bins=HISTOGRAM_BINS, range=(lo, hi))
        out[name] = {
            "rows": int(rows.sum()),
            "mean": w.mean(axis=1).tolist(),
            "std": w.std(axis=1).tolist(),
            "min": w.min(axis=1).tolist(),
            "max": w.max(axis=1).tolist(),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    return out


class FoldMonitor(Monitor):
    """Checkpoints, the ``metrics.jsonl`` lines and the progress bar of one fold's run."""

    history = False  # per-epoch weight tables are summarised in metrics.jsonl instead

    def __init__(
        self,
        fold: int,
        out: pathlib.Path,
        predict_rows: dict[str, np.ndarray],
        metric: str,
        progress: Any = None,
    ):
        self.fold = fold
        self.out = out
        self.predict_rows = predict_rows
        self.metric = metric
        self.progress = progress
        self.task = None
        self.info: RunInfo | None = None
        self.checkpoints: Checkpoints | None = None
        self.outputs: FoldOutputs | None = None
        self.resumed_from = 0

    def start(self, info: RunInfo) -> None:
        self.info = info
        self.checkpoints = Checkpoints(self.out / "checkpoints" / f"run{self.fold}")
        _, _, self.mask, _ = info.problem.training_arrays()
        if self.progress is not None:
            seeds = ",".join(map(str, info.seeds))
            self.task = self.progress.add_task(
                f"fold {self.fold} (seeds {seeds})",
                total=info.settings.epochs,
                loss=float("nan"),
                metric=float("nan"),
            )

    def restore(self, template: Snapshot) -> Snapshot | None:
        got = self.checkpoints.restore(template)
        epoch = 0 if got is None else got[0].epoch
        lines = [line for line in read_metrics(self.out) if not _this_run(line, self.fold, epoch)]
        if got is not None and not any(
            line["run"] == self.fold and line["epoch"] == epoch - 1 for line in lines
        ):
            lines.append(got[1]["line"])  # written after the checkpoint, lost to a kill
        _write_lines(self.out / METRICS, lines)
        self.resumed_from = epoch
        if self.task is not None and epoch:
            last = got[1]["line"]
            self._advance(epoch, last)
        return None if got is None else got[0]

    def epoch(self, report: EpochReport, snapshot: Snapshot) -> None:
        line = self._line(report, snapshot)
        self.checkpoints.save(snapshot, {"line": line})
        with (self.out / METRICS).open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.task is not None:
            self._advance(report.epoch + 1, line)

    def finish(self, result: Result, snapshot: Snapshot) -> None:
        info = self.info
        probabilities = {
            split: info.probabilities(snapshot.best_params, x)
            for split, x in self.predict_rows.items()
        }
        mix = snapshot.state.mix_params
        trust = np.asarray(mix["trust"]) if isinstance(mix, dict) and "trust" in mix else None
        self.outputs = FoldOutputs(
            fold=self.fold,
            seeds=info.seeds,
            probabilities=probabilities,
            weights=info.weights(snapshot.state),
            row_ids=info.problem.training_ids(),
            columns=info.columns,
            mask=self.mask,
            trust=trust,
            steps_per_epoch=info.steps_per_epoch,
        )
        self.checkpoints.close()

    def _advance(self, completed: int, line: dict) -> None:
        self.progress.update(
            self.task,
            completed=completed,
            loss=float(np.mean(line["train_loss"])),
            metric=float(np.mean(line[f"valid_{self.metric}"])),
        )

    def _line(self, report: EpochReport, snapshot: Snapshot) -> dict:
        info = self.info
        columns = {}
        for k, name in enumerate(info.columns):
            columns[name] = {
                "loss": report.loss_per_column[:, k].tolist(),
                "step_weight_mean": report.weight_mean[:, k].tolist(),
            }
        weights = info.weights(snapshot.state)
        if weights is not None:
            for name, stats in weight_statistics(weights, self.mask, info.columns).items():
                columns[name]["weights"] = stats
        return {
            "run": self.fold,
            "epoch": report.epoch,
            "seeds": list(info.seeds),
            "train_loss": report.train_loss.tolist(),
            f"valid_{self.metric}": report.selection.tolist(),
            f"best_valid_{self.metric}": report.best_score.tolist(),
            "best_epoch": report.best_epoch.tolist(),
            "steps": report.steps,
            "seconds": report.seconds,
            "columns": columns,
        }


def _this_run(line: dict, fold: int, from_epoch: int) -> bool:
    """Whether ``line`` is fold ``fold``'s, for an epoch at or after ``from_epoch``."""
    return line.get("run") == fold and line.get("epoch", -1) >= from_epoch


def read_metrics(out: pathlib.Path) -> list[dict]:
    """The lines of ``out/metrics.jsonl`` (none if it does not exist); a torn last line (a
    kill mid-write) is dropped."""
    path = out / METRICS
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            break
    return lines


def _write_lines(path: pathlib.Path, lines: list[dict]) -> None:
    with atomic_write(path) as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")


@contextlib.contextmanager
def atomic_write(path: pathlib.Path, mode: str = "w", **kwargs) -> Iterator[Any]:
    """A file written under a temporary name and renamed into place when complete."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the permissions of a file opened for writing
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def progress_bar(quiet: bool):
    """A rich progress display on stderr (epoch, loss, validation metric, ETA), or None."""
    if quiet:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} valid {task.fields[metric]:.3f}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def train_folds(
    recipe: Recipe,
    settings: Settings,
    seeds: Sequence[int],
    out: pathlib.Path,
    predict_rows: dict[str, np.ndarray],
    *,
    quiet: bool = False,
) -> tuple[Result, list[FoldOutputs]]:
    """Runs ``recipe`` over its folds with a :class:`FoldMonitor` each."""
    monitors: dict[int, FoldMonitor] = {}
    progress = progress_bar(quiet)

    def monitor_for(fold: int) -> FoldMonitor:
        monitors[fold] = FoldMonitor(
            fold, out, predict_rows, settings.select_metric, progress=progress
        )
        return monitors[fold]

    with progress if progress is not None else contextlib.nullcontext():
        result = recipe.run(settings, seeds, monitor_for=monitor_for)
    return result, [monitors[f].outputs for f in sorted(monitors)]


def ensemble(outputs: Sequence[FoldOutputs], split: str) -> np.ndarray:
    """``[n, C]``: the mean class probabilities over every seed of every fold."""
    probs = np.concatenate([o.probabilities[split] for o in outputs])
    return probs.mean(axis=0)


def final_record(
    result: Result,
    recipe: Recipe,
    seeds: Sequence[int],
    outputs: Sequence[FoldOutputs],
    y_test: np.ndarray,
    num_classes: int,
    metric: str,
    extra: dict | None = None,
) -> dict:
    """The content of ``final.json``: test metrics per seed and their summaries, the chosen
    (best validation) epoch per seed, and the seeds' ensemble on the test rows."""
    pred = ensemble(outputs, "test").argmax(-1)
    return {
        "method": recipe.name,
        "knobs": recipe.knobs,
        "seeds": list(seeds),
        "per_seed": {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "best_epoch": result.best_epoch,
            f"valid_{metric}": result.selection,
            "fold": result.folds,
        },
        "accuracy": summary(result.accuracy),
        "macro_f1": summary(result.macro_f1),
        f"valid_{metric}": summary(result.selection),
        "ensemble": {
            "accuracy": float(np.mean(pred == y_test)),
            "macro_f1": macro_f1(y_test, pred, num_classes),
        },
        "seconds": result.seconds,
        "compile_seconds": result.compile_seconds,
        **(extra or {}),
    }


def write_json(path: pathlib.Path, data: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def summary(values: Sequence[float]) -> dict[str, float]:
    """``{"mean": .., "std": ..}`` (population std over seeds)."""
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std())}


def write_csv(target: pathlib.Path | Any, rows: Sequence[dict]) -> None:
    """``rows`` (dicts with the same keys) as CSV to a path (atomically) or an open file;
    None is written as an empty field."""
    if not rows:
        raise ValueError("no rows to write")

    def dump(fh):
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)

    if hasattr(target, "write"):
        dump(target)
        return
    with atomic_write(target, newline="") as fh:
        dump(fh)


def write_predictions(
    path: pathlib.Path,
    parts: Sequence[tuple[str, Sequence[int], Sequence[str], np.ndarray | None, np.ndarray]],
    class_names: Sequence[str],
) -> None:
    """``predictions.csv``: per row ``row`` (``<split>:<index>``, the index in its split),
    ``id`` (the data's own row id), ``label`` (empty where unknown), ``predicted`` and
    one probability per class (``p_<class>``); ``parts`` are ``(split, indices, ids,
    labels or None, probabilities [n, C])``."""
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["row", "id", "label", "predicted", *[f"p_{c}" for c in class_names]])
        for split, indices, ids, labels, probs in parts:
            pred = probs.argmax(-1)
            for i, row in enumerate(probs):
                label = "" if labels is None else class_names[int(labels[i])]
                writer.writerow(
                    [
                        f"{split}:{int(indices[i])}",
                        ids[i],
                        label,
                        class_names[int(pred[i])],
                        *(f"{p:.6g}" for p in row),
                    ]
                )


def write_weights(path: pathlib.Path, outputs: Sequence[FoldOutputs]) -> None:
    """``weights.npz`` (compressed): per fold ``f``, ``weights_run<f>`` ``[S, N, K]``,
    ``rows_run<f>`` (row ids), ``mask_run<f>`` ``[N, K]`` and ``seeds_run<f>``; ``columns``
    (the loss columns); ``trust_run<f>`` ``[S, K]`` for the trust mixer. A method that keeps
    no weights (learning to reweight) has no ``weights_run<f>``."""
    arrays: dict[str, np.ndarray] = {"columns": np.asarray(outputs[0].columns, dtype=str)}
    for o in outputs:
        if o.weights is not None:
            arrays[f"weights_run{o.fold}"] = o.weights.astype(np.float32)
        arrays[f"rows_run{o.fold}"] = np.asarray(o.row_ids, dtype=str)
        arrays[f"mask_run{o.fold}"] = o.mask.astype(bool)
        arrays[f"seeds_run{o.fold}"] = np.asarray(o.seeds)
        if o.trust is not None:
            arrays[f"trust_run{o.fold}"] = o.trust.astype(np.float32)
    with atomic_write(path, mode="wb") as fh:
        np.savez_compressed(fh, **arrays)
