"""One training harness for every method of the accuracy benchmarks (rules, distillation).

A :class:`Problem` holds arrays only: training inputs with a ``[N, K, C]`` tensor of target
distributions (one per loss column: a one-hot gold or weak label, a label model's soft label,
a teacher's softened distribution) and a ``[N, K]`` mask saying which columns apply to which
row; a clean part for hypergradients (``x_meta``), a disjoint clean part for model
selection (``x_sel``) and the test set. ``meta`` and ``sel`` name roles, not splits: both
are rows of the data's validation split (``valid``), cut into folds by
:func:`fold_roles`. Loss column ``k`` of example ``i`` is
``mask_ik * T_k^2 * KL(targets_ik || softmax(logits_i / T_k))`` (cross-entropy up to a
constant for one-hot targets, the distillation loss for teacher columns).

:func:`train` runs one :class:`Method` for several seeds at once (``jax.vmap`` over
independent states: one compilation, one batched computation), keeps each seed's best
epoch on the selection data and reports test accuracy and macro-F1 per seed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import amal_jax
from amal_jax import baselines, clean
from amal_jax.distill.models import MLP

KINDS = ("fixed", "amal", "l2rw", "mwn")
# The clean-rows-both-ways variants (rules and distillation): half of every batch is clean
# rows, the trust mixer's meta learning rate (normalised hypergradient, SGD).
CLEAN_SHARE = 0.5
TRUST_LR = 0.03
MIXERS = ("table", "network", "global", "trust")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Arrays of one benchmark problem (see the module docstring)."""

    name: str
    x_train: np.ndarray  # [N, D] float32
    targets: np.ndarray  # [N, K, C] float32, rows of each column sum to 1 where mask is 1
    mask: np.ndarray  # [N, K] float32 in {0, 1}
    temperatures: tuple[float, ...]  # [K]
    columns: tuple[str, ...]  # [K] names
    # Roles of validation rows (fold_roles): hypergradient rows and selection rows.
    x_meta: np.ndarray  # [V, D] clean validation rows for hypergradients
    y_meta: np.ndarray  # [V] int
    x_sel: np.ndarray  # [S, D] clean validation rows for model selection
    y_sel: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # Clean rows trained on as well (cross-fitting): they get a loss column of their own,
    # named "clean", appended after ``columns``, with a fixed weight of 1.
    x_clean: np.ndarray | None = None  # [Nc, D]
    y_clean: np.ndarray | None = None  # [Nc] int
    # Where the training rows come from, for reports (e.g. ``"train:17"``, ``"valid:3"``):
    # [N] for the weak rows and [Nc] for the clean rows; None: ``"row<i>"`` / ``"clean<i>"``.
    row_ids: np.ndarray | None = None
    clean_ids: np.ndarray | None = None

    def __post_init__(self):
        n, k, c = self.targets.shape
        if self.x_train.shape[0] != n or self.mask.shape != (n, k):
            raise ValueError(
                f"{self.name}: x_train {self.x_train.shape}, targets {self.targets.shape} and "
                f"mask {self.mask.shape} disagree."
            )
        if len(self.temperatures) != k or len(self.columns) != k:
            raise ValueError(f"{self.name}: need one temperature and one name per loss column.")
        if c != self.num_classes:
            raise ValueError(f"{self.name}: targets have {c} classes, expected {self.num_classes}.")
        if not np.any(self.mask) and not self.num_clean:
            raise ValueError(f"{self.name}: no training row has any loss column.")
        if (self.x_clean is None) != (self.y_clean is None) or (
            self.x_clean is not None and len(self.x_clean) != len(self.y_clean)
        ):
            raise ValueError(f"{self.name}: x_clean and y_clean must be given together.")
        for ids, count, what in (
            (self.row_ids, n, "row_ids"),
            (self.clean_ids, self.num_clean, "clean_ids"),
        ):
            if ids is not None and len(ids) != count:
                raise ValueError(f"{self.name}: {what} has {len(ids)} entries for {count} rows.")

    def training_ids(self) -> np.ndarray:
        """``[N + Nc]`` names of the rows of :meth:`training_arrays`, in their order."""
        n = self.x_train.shape[0]
        weak = self.row_ids if self.row_ids is not None else [f"row{i}" for i in range(n)]
        clean = (
            self.clean_ids
            if self.clean_ids is not None
            else [f"clean{i}" for i in range(self.num_clean)]
        )
        return np.asarray([*map(str, weak), *map(str, clean)], dtype=object)

    @property
    def num_clean(self) -> int:
        return 0 if self.x_clean is None else len(self.x_clean)

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
        """``(x, targets, mask, columns)``: the weak rows, then the clean rows if any.

        With clean rows, a last column "clean" (cross-entropy to their labels) is added; it
        is zero on the weak rows, and the other columns are zero on the clean rows.
        """
        if not self.num_clean:
            return self.x_train, self.targets, self.mask, self.columns
        n, k, c = self.targets.shape
        nc = self.num_clean
        targets = np.zeros((n + nc, k + 1, c), np.float32)
        targets[:n, :k] = self.targets
        targets[n:, k] = np.eye(c, dtype=np.float32)[self.y_clean]
        mask = np.zeros((n + nc, k + 1), np.float32)
        mask[:n, :k] = self.mask
        mask[n:, k] = 1.0
        x = np.concatenate([self.x_train, self.x_clean])
        return x, targets, mask, (*self.columns, "clean")


@dataclasses.dataclass(frozen=True)
class Method:
    """How the loss columns are mixed.

    kind: ``"fixed"`` (``weights`` fixed), ``"amal"`` (a learned mixer: ``mixer`` in
    ``table`` / ``network`` / ``global`` / ``trust`` (:func:`amal_jax.trust_table`, the columns
    in ``fixed`` and the clean column kept at their weight), initial ``weights``, meta learning
    rate ``meta_lr``,
    ``meta_optimizer`` ``"sgd"`` or ``"adam"``, ``normalize`` the hypergradient),
    ``"l2rw"`` (learning to reweight) or ``"mwn"`` (Meta-Weight-Net).
    """

    name: str
    kind: str
    weights: tuple[float, ...] | None = None
    mixer: str = "table"
    meta_lr: float = 0.1
    meta_optimizer: str = "sgd"
    normalize: bool = True
    meta_steps: int = 1
    warmup_epochs: int = 0
    refresh_every: int = 0  # > 0: the paper's schedule (meta passes every this many epochs)
    head_only: bool = False  # the look-ahead moves only the last layer
    # > 1: a meta update every this many steps (amortised), with the meta learning rate
    # multiplied by it: one meta step on one batch's hypergradient then estimates, without
    # bias, the sum of the meta steps it replaces (the same meta step size per training step).
    meta_every: int = 1
    # Share of clean rows in every training batch when the problem has clean rows; 0: the
    # clean rows are pooled with the weak ones and drawn uniformly.
    clean_share: float = 0.0
    fixed: tuple[int, ...] = ()  # trust mixer: columns whose weight stays at its init

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method kind must be one of {KINDS}; got {self.kind!r}.")
        if self.kind == "fixed" and self.weights is None:
            raise ValueError(f"method {self.name}: fixed mixing needs weights.")
        if self.mixer not in MIXERS:
            raise ValueError(f"method {self.name}: unknown mixer {self.mixer!r}.")
        if self.meta_optimizer not in ("sgd", "adam"):
            raise ValueError(f"method {self.name}: meta_optimizer must be 'sgd' or 'adam'.")
        if self.refresh_every and self.kind != "amal":
            raise ValueError(f"method {self.name}: refresh_every needs kind 'amal'.")
        if self.meta_every < 1:
            raise ValueError(f"method {self.name}: meta_every must be at least 1.")
        if not 0.0 <= self.clean_share < 1.0:
            raise ValueError(f"method {self.name}: clean_share must lie in [0, 1).")


def resolve_knobs(method: str, given: dict, used: Sequence[str], defaults: dict) -> dict:
    """``defaults`` with the ``given`` knobs that are not None; refuses a knob ``method`` lacks."""
    unused = sorted(k for k, v in given.items() if v is not None and k not in used)
    if unused:
        raise ValueError(
            f"method {method!r} has no knob {', '.join(unused)} (its knobs: "
            f"{', '.join(used) or 'none'})."
        )
    return {**defaults, **{k: v for k, v in given.items() if v is not None}}


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"64"``, ``"64,64"``; ``""`` or ``"linear"`` for no hidden layer."""
    text = text.strip()
    if text in ("", "linear"):
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes comma-separated layer sizes such as 64,64 (or 'linear'); got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive; got {text!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class Settings:
    """Training settings shared by every method of a benchmark."""

    hidden: tuple[int, ...] = (64,)
    epochs: int = 20
    batch_size: int = 64
    val_batch_size: int = 64
    learning_rate: float = 1e-3
    select_metric: str = "macro_f1"  # or "accuracy"
    # Small training sets (e.g. only the labelled rows) still get this many steps per epoch:
    # the epoch then walks through several reshuffled passes.
    min_steps_per_epoch: int = 20

    def __post_init__(self):
        if self.select_metric not in ("macro_f1", "accuracy"):
            raise ValueError(
                f"select_metric must be 'macro_f1' or 'accuracy'; got {self.select_metric!r}."
            )


@dataclasses.dataclass
class Result:
    """Per-seed test metrics of one method on one problem."""

    method: str
    accuracy: list[float]
    macro_f1: list[float]
    best_epoch: list[int]
    selection: list[float]  # best selection score per seed (what model selection saw)
    seconds: float
    final_weights: Any = None  # [S, ...] mixer params at the end (tables: [S, N, K])
    weight_history: Any = None  # per epoch: [S, N, K] table params, or the [S, K] trusts
    configs: int = 1  # configurations tried on the selection data (tuned methods: > 1)
    # Rotated runs (:func:`rotate`): the validation fold each seed selected on; their
    # final_weights and weight_history are then lists, one entry per fold (its seeds).
    folds: list[int] | None = None
    # Of ``seconds``, the time spent compiling the training step programs (XLA): a fixed
    # cost per program that long runs, or a compilation cache, amortise.
    compile_seconds: float = 0.0


def append_gold_rows(x, targets, mask, x_extra, y_extra, num_classes):
    """Training arrays plus extra rows whose only loss is column 0 (cross-entropy to gold).

    Used to train on clean validation labels (cross-fitting). Returns ``(x, targets, mask)``.
    """
    if len(x_extra) == 0:
        return x, targets, mask
    extra_t = np.zeros((len(x_extra), *targets.shape[1:]), np.float32)
    extra_t[:, 0] = np.eye(num_classes, dtype=np.float32)[y_extra]
    extra_m = np.zeros((len(x_extra), mask.shape[1]), np.float32)
    extra_m[:, 0] = 1.0
    return (
        np.concatenate([x, x_extra]),
        np.concatenate([targets, extra_t]),
        np.concatenate([mask, extra_m]),
    )


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _loss_functions(model: MLP, temperatures: tuple[float, ...]):
    temps = jnp.asarray(temperatures, jnp.float32)

    def loss_fn(params, batch):
        logits = model.apply(params, batch["x"])  # [B, C]
        log_p = jax.nn.log_softmax(logits[:, None, :] / temps[None, :, None])  # [B, K, C]
        t = batch["targets"]
        kl = jnp.sum(jax.scipy.special.xlogy(t, t) - t * log_p, axis=-1)  # [B, K]
        return kl * temps**2 * batch["mask"]

    def val_loss_fn(params, batch):
        return jnp.mean(amal_jax.cross_entropy(model.apply(params, batch["x"]), batch["y"]))

    return loss_fn, val_loss_fn


def _config(method: Method, problem: Problem, loss_fn, val_loss_fn, optimizer, steps_per_epoch):
    n, k = problem.mask.shape
    n, k = n + problem.num_clean, k + bool(problem.num_clean)
    # The clean rows' own column keeps weight 1 in every method that mixes.
    extra = (1.0,) if problem.num_clean else ()
    if method.kind == "fixed":
        return baselines.fixed_mixing(loss_fn, val_loss_fn, optimizer, (*method.weights, *extra))
    if problem.num_clean and method.kind in ("l2rw", "mwn"):
        raise ValueError(f"method {method.name}: clean training rows need 'fixed' or 'amal'.")
    if method.kind == "l2rw":
        return baselines.learning_to_reweight(loss_fn, val_loss_fn, optimizer)
    if method.kind == "mwn":
        meta = optax.adam(method.meta_lr)
        return baselines.meta_weight_net(
            loss_fn, val_loss_fn, optimizer, num_losses=k, meta_optimizer=meta
        )
    init = (*method.weights, *extra) if method.weights is not None else (1.0,) * k
    if method.mixer == "table":
        mixer = amal_jax.table(n, k, init=init)
    elif method.mixer == "trust":
        fixed = (*method.fixed, *((k - 1,) if extra else ()))
        mixer = amal_jax.trust_table(n, k, trust_init=init, fixed=fixed)
    elif method.mixer == "global":
        mixer = amal_jax.global_weights(k, init=init)
    else:
        mixer = amal_jax.network(k, hidden=(32,), init=init)
    meta_lr = method.meta_lr * (1 if method.refresh_every else method.meta_every)
    meta = optax.sgd(meta_lr) if method.meta_optimizer == "sgd" else optax.adam(meta_lr)
    return amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=mixer,
        meta_optimizer=meta,
        meta_steps=method.meta_steps,
        meta_every=0 if method.refresh_every else method.meta_every,
        warmup_steps=0 if method.refresh_every else method.warmup_epochs * steps_per_epoch,
        normalize_hypergradient=method.normalize,
        lookahead_mask=_head_mask if method.head_only else None,
    )


def _head_mask(params):
    """True for the leaves of the last layer (named ``head``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params
    )


@dataclasses.dataclass
class Snapshot:
    """Where a training run stands after ``epoch`` epochs: everything needed to continue it.

    ``state`` is the stacked :class:`amal_jax.AmalState` of every seed, ``best_params`` each
    seed's parameters at its best selection epoch so far (``best_score``, ``best_epoch``:
    ``[S]``), ``rng_states`` the NumPy generators' states that draw the batches (one per seed)
    and ``history`` the learned weights per epoch (tables and trusts; None otherwise).
    Restored from a checkpoint, it continues the run exactly as if it had not stopped.
    """

    epoch: int
    state: Any
    best_params: Any
    best_score: np.ndarray
    best_epoch: np.ndarray
    rng_states: list[dict]
    history: list[np.ndarray] | None


@dataclasses.dataclass(frozen=True)
class EpochReport:
    """What one epoch of a run did (per seed, ``[S]`` or ``[S, K]``): the mean mixed training
    loss and mean weights per loss column over its steps (``weight_mean``: the mean of the
    batch means), the selection score of this epoch's model and the best so far."""

    epoch: int
    train_loss: np.ndarray  # [S]
    loss_per_column: np.ndarray  # [S, K]
    weight_mean: np.ndarray  # [S, K]
    selection: np.ndarray  # [S]
    best_score: np.ndarray  # [S]
    best_epoch: np.ndarray  # [S]
    seconds: float
    steps: int


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A run as its :class:`Monitor` sees it when it starts.

    ``weights(state)`` gives every training row's weights ``[S, N, K]`` (NumPy; the rows of
    :meth:`Problem.training_arrays`), or None for a method that keeps none (learning to
    reweight); ``probabilities(params, x)`` the class probabilities ``[S, n, C]`` of stacked
    parameters on inputs ``x``.
    """

    problem: Problem
    method: Method
    settings: Settings
    seeds: tuple[int, ...]
    columns: tuple[str, ...]
    steps_per_epoch: int
    weights: Callable[[Any], np.ndarray | None]
    probabilities: Callable[[Any, np.ndarray], np.ndarray]


class Monitor:
    """Hooks into a :func:`train` run: progress, metrics, checkpoints (all optional).

    The base class does nothing; override what you need. :func:`train` calls
    :meth:`start` once, then :meth:`restore` with a snapshot of the fresh run (the
    structure a checkpoint must have), :meth:`epoch` after every epoch and :meth:`finish`
    at the end, with the final snapshot (its ``best_params`` gave the test metrics).
    ``history = False`` drops the per-epoch weights (``Result.weight_history`` is then None
    and snapshots stay small).
    """

    history: bool = True

    def start(self, info: RunInfo) -> None:
        """The run is about to train (its programs are not compiled yet)."""

    def restore(self, template: Snapshot) -> Snapshot | None:
        """A snapshot to continue from (same structure as ``template``), or None."""
        return None

    def epoch(self, report: EpochReport, snapshot: Snapshot) -> None:
        """Epoch ``report.epoch`` is done; ``snapshot`` continues after it."""

    def finish(self, result: Result, snapshot: Snapshot) -> None:
        """The run is done."""


def train(
    problem: Problem,
    method: Method,
    settings: Settings,
    seeds: Sequence[int],
    *,
    monitor: Monitor | None = None,
) -> Result:
    """Trains ``method`` on ``problem`` for every seed at once; best selection epoch per seed.

    ``monitor`` (a :class:`Monitor`) sees the run start, every epoch and the end, and may
    hand back a snapshot to continue from (a resumed run gives the same result as one that
    was never stopped).
    """
    t0 = time.perf_counter()
    seeds = list(seeds)
    model = MLP(num_classes=problem.num_classes, hidden=tuple(settings.hidden))
    temperatures = (*problem.temperatures, *((1.0,) if problem.num_clean else ()))
    loss_fn, val_loss_fn = _loss_functions(model, temperatures)
    # eps_root = 1e-8 as in the recorded results (with eps_root = 0 the look-ahead's safe
    # derivatives would give the same finite hypergradients up to that tiny shift).
    optimizer = optax.adam(settings.learning_rate, eps_root=1e-8)
    x_all, targets_all, mask_all, columns = problem.training_arrays()
    n = x_all.shape[0]
    n_weak = problem.x_train.shape[0]
    mixed = bool(problem.num_clean) and method.clean_share > 0
    batch = min(settings.batch_size, n)
    if mixed:
        # As many steps per epoch as a pass over the weak rows at the full batch size (the
        # step budget of the methods without clean rows); the clean rows fill their share of
        # each batch, so an epoch sees a part of the weak rows.
        steps_per_epoch = max(settings.min_steps_per_epoch, n_weak // batch)
    else:
        steps_per_epoch = max(settings.min_steps_per_epoch, n // batch)
    config = _config(method, problem, loss_fn, val_loss_fn, optimizer, steps_per_epoch)
    dummy = jnp.zeros((1, problem.x_train.shape[1]), jnp.float32)
    states = [
        amal_jax.init(config, model.init(jax.random.key(s), dummy), key=jax.random.key(1000 + s))
        for s in seeds
    ]
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    run = jax.jit(jax.vmap(amal_jax.step), donate_argnums=0)
    plain = None
    if method.kind == "amal" and method.meta_every > 1 and not method.refresh_every:
        # Under vmap a traced schedule's lax.cond runs both branches: schedule on the host.
        run = jax.jit(jax.vmap(functools.partial(amal_jax.step, meta=True)), donate_argnums=0)
        plain = jax.jit(jax.vmap(functools.partial(amal_jax.step, meta=False)), donate_argnums=0)
    refresh = None
    if method.refresh_every:
        run = jax.jit(jax.vmap(amal_jax.train_update), donate_argnums=0)
        refresh = jax.jit(jax.vmap(amal_jax.meta_update), donate_argnums=0)
    predict = jax.jit(jax.vmap(lambda p, x: jnp.argmax(model.apply(p, x), -1), in_axes=(0, None)))
    compile_seconds = [0.0]
    run, plain, refresh = (
        None if fn is None else _timed_compile(fn, compile_seconds) for fn in (run, plain, refresh)
    )

    x_train = jnp.asarray(x_all)
    targets = jnp.asarray(targets_all)
    mask = jnp.asarray(mask_all)
    x_meta, y_meta = jnp.asarray(problem.x_meta), jnp.asarray(problem.y_meta)
    val_batch = min(settings.val_batch_size, problem.x_meta.shape[0])
    rngs = [np.random.default_rng(s) for s in seeds]

    @jax.jit
    def gather(idx, vidx):
        train_batch = {"x": x_train[idx], "targets": targets[idx], "mask": mask[idx], "id": idx}
        return train_batch, {"x": x_meta[vidx], "y": y_meta[vidx]}

    history = None
    if method.kind == "amal" and method.mixer in ("table", "trust"):
        history = [] if monitor is None or monitor.history else None
    best_score = np.full(len(seeds), -np.inf)
    best_params = jax.tree.map(jnp.copy, state.params)  # the state itself is donated
    best_epoch = np.zeros(len(seeds), int)
    start_epoch = 0

    def snapshot(epoch: int) -> Snapshot:
        """Everything training needs to go on after ``epoch`` epochs (copies of the mutable)."""
        return Snapshot(
            epoch,
            state,
            best_params,
            best_score.copy(),
            best_epoch.copy(),
            [r.bit_generator.state for r in rngs],
            None if history is None else list(history),
        )

    if monitor is not None:
        monitor.start(
            RunInfo(
                problem=problem,
                method=method,
                settings=settings,
                seeds=tuple(seeds),
                columns=columns,
                steps_per_epoch=steps_per_epoch,
                weights=_weights_function(config, x_train, targets, mask),
                probabilities=_probabilities_function(model),
            )
        )
        resumed = monitor.restore(snapshot(0))
        if resumed is not None:
            start_epoch, state, best_params = resumed.epoch, resumed.state, resumed.best_params
            best_score = np.asarray(resumed.best_score, float).copy()
            best_epoch = np.asarray(resumed.best_epoch, int).copy()
            history = None if resumed.history is None else list(resumed.history)
            for r, saved in zip(rngs, resumed.rng_states, strict=True):
                r.bit_generator.state = saved

    passes = -(-steps_per_epoch * batch // n)  # reshuffled passes covering one epoch

    def batches():
        if mixed:
            parts = [
                amal_jax.clean.mixed_batch_indices(
                    r,
                    n_weak,
                    problem.num_clean,
                    batch_size=batch,
                    clean_share=method.clean_share,
                    steps=steps_per_epoch,
                )
                for r in rngs
            ]
            perms = np.stack([np.concatenate([w, n_weak + c], axis=1).ravel() for w, c in parts])
        else:
            perms = np.stack(
                [np.concatenate([r.permutation(n) for _ in range(passes)]) for r in rngs]
            )
        for i in range(steps_per_epoch):
            idx = perms[:, i * batch : (i + 1) * batch]
            vidx = np.stack(
                [r.choice(problem.x_meta.shape[0], val_batch, replace=False) for r in rngs]
            )
            yield gather(jnp.asarray(idx), jnp.asarray(vidx))

    for epoch in range(start_epoch, settings.epochs):
        t_epoch = time.perf_counter()
        sums = _MetricSums() if monitor is not None else None
        if refresh is not None and amal_jax.is_refresh_epoch(
            epoch, warmup_epochs=method.warmup_epochs, every=method.refresh_every
        ):
            for train_batch, valid_batch in batches():
                state, _ = refresh(state, train_batch, valid_batch)
        for i, (train_batch, valid_batch) in enumerate(batches()):
            if plain is not None and not amal_jax.is_meta_step(config, epoch * steps_per_epoch + i):
                state, metrics = plain(state, train_batch, valid_batch)
            elif refresh is None:
                state, metrics = run(state, train_batch, valid_batch)
            else:
                state, metrics = run(state, train_batch)
            if sums is not None:
                sums.add(metrics)
        if history is not None:
            mix = state.mix_params
            # Tables: [S, N, K] per epoch; the trust mixer: its [S, K] column trusts.
            history.append(np.asarray(mix["trust"] if isinstance(mix, dict) else mix))
        pred = np.asarray(predict(state.params, jnp.asarray(problem.x_sel)))
        improved = np.zeros(len(seeds), bool)
        scores = np.zeros(len(seeds))
        for s in range(len(seeds)):
            scores[s] = _score(problem.y_sel, pred[s], problem.num_classes, settings.select_metric)
            if scores[s] > best_score[s]:
                best_score[s], best_epoch[s], improved[s] = scores[s], epoch, True
        if improved.any():
            best_params = _keep_improved(best_params, state.params, jnp.asarray(improved))
        if monitor is not None:
            monitor.epoch(
                sums.report(epoch, scores, best_score, best_epoch, time.perf_counter() - t_epoch),
                snapshot(epoch + 1),
            )
    pred = np.asarray(predict(best_params, jnp.asarray(problem.x_test)))
    acc = [float(np.mean(p == problem.y_test)) for p in pred]
    f1 = [macro_f1(problem.y_test, p, problem.num_classes) for p in pred]
    result = Result(
        method=method.name,
        accuracy=acc,
        macro_f1=f1,
        best_epoch=best_epoch.tolist(),
        selection=best_score.tolist(),
        seconds=time.perf_counter() - t0,
        final_weights=None if state.mix_params is None else jax.device_get(state.mix_params),
        weight_history=history,
        compile_seconds=compile_seconds[0],
    )
    if monitor is not None:
        monitor.finish(result, snapshot(settings.epochs))
    return result


class _MetricSums:
    """Sums of the step metrics a monitor reports, kept on the device until the epoch ends."""

    def __init__(self):
        self.sums = None
        self.steps = 0

    def add(self, metrics):
        part = {k: metrics[k] for k in ("loss", "loss_per_column", "weight_mean")}
        self.sums = part if self.sums is None else jax.tree.map(jnp.add, self.sums, part)
        self.steps += 1

    def report(self, epoch, scores, best_score, best_epoch, seconds) -> EpochReport:
        sums = {k: np.asarray(v, np.float64) / max(self.steps, 1) for k, v in self.sums.items()}
        return EpochReport(
            epoch=epoch,
            train_loss=sums["loss"],
            loss_per_column=sums["loss_per_column"],
            weight_mean=sums["weight_mean"],
            selection=scores.copy(),
            best_score=best_score.copy(),
            best_epoch=best_epoch.copy(),
            seconds=seconds,
            steps=self.steps,
        )


def _weights_function(config, x, targets, mask, chunk: int = 4096):
    """``state -> [S, N, K]`` weights of every training row (None without a mixer)."""
    mixer = getattr(config, "mixer", None)
    if mixer is None:
        return lambda state: None

    @jax.jit
    def one(params, mix_params, idx):
        batch = {"x": x[idx], "targets": targets[idx], "mask": mask[idx], "id": idx}
        losses = jax.lax.stop_gradient(config.loss_fn(params, batch))
        return mixer.apply(mix_params, batch, losses)

    many = jax.vmap(one, in_axes=(0, 0, None))

    def weights(state):
        parts = [
            np.asarray(many(state.params, state.mix_params, jnp.arange(i, min(i + chunk, len(x)))))
            for i in range(0, len(x), chunk)
        ]
        return np.concatenate(parts, axis=1)

    return weights


def _probabilities_function(model):
    probs = jax.jit(jax.vmap(lambda p, x: jax.nn.softmax(model.apply(p, x), -1), in_axes=(0, None)))
    return lambda params, x: np.asarray(probs(params, jnp.asarray(x, jnp.float32)))


def _keep_improved(best, params, improved):
    """``params`` for the models where ``improved`` (``[M]`` bool), else ``best``."""
    return jax.tree.map(
        lambda b, p: jnp.where(improved.reshape((-1,) + (1,) * (p.ndim - 1)), p, b), best, params
    )


def _timed_compile(fn, total: list[float]):
    """``fn`` (jitted), compiled ahead of time on its first call; adds the compile time to
    ``total[0]``. Every later call must have the same shapes (one training run's batches)."""
    compiled = []

    def call(*args):
        if not compiled:
            t0 = time.perf_counter()
            compiled.append(fn.lower(*args).compile())
            total[0] += time.perf_counter() - t0
        return compiled[0](*args)

    return call


def _score(y, pred, num_classes, metric):
    if metric == "accuracy":
        return float(np.mean(pred == y))
    return macro_f1(y, pred, num_classes)


def rotate(
    make: Callable[[int], Problem],
    num_folds: int,
    method: Method,
    settings: Settings,
    seeds: Sequence[int],
    *,
    monitor_for: Callable[[int], Monitor | None] | None = None,
) -> Result:
    """``method`` over rotating validation folds: the ``j``-th seed trains on
    ``make(j % num_folds)``, the problem whose selection rows are fold ``j % num_folds``
    (the other folds feed its look-aheads, or train).

    With 5 seeds and 3 folds the seeds select on folds 0, 1, 2, 0, 1; every method of a
    benchmark uses the same assignment, so mean selection scores are comparable between
    methods and (with at least ``num_folds`` seeds) cover every validation row. Per-seed
    metrics come back in seed order
    (``Result.folds`` names each seed's fold); the learned weights per fold.
    ``monitor_for(fold)`` gives each fold's run its :class:`Monitor` (None: none).
    """
    t0 = time.perf_counter()
    seeds = list(seeds)
    order = [[j for j in range(len(seeds)) if j % num_folds == f] for f in range(num_folds)]
    order = [js for js in order if js]
    runs = [
        train(
            make(js[0] % num_folds),
            method,
            settings,
            [seeds[j] for j in js],
            monitor=None if monitor_for is None else monitor_for(js[0] % num_folds),
        )
        for js in order
    ]
    position = {j: (r, i) for r, js in zip(runs, order, strict=True) for i, j in enumerate(js)}

    def per_seed(key):
        return [getattr(position[j][0], key)[position[j][1]] for j in range(len(seeds))]

    return Result(
        method=method.name,
        accuracy=per_seed("accuracy"),
        macro_f1=per_seed("macro_f1"),
        best_epoch=per_seed("best_epoch"),
        selection=per_seed("selection"),
        seconds=time.perf_counter() - t0,
        final_weights=[r.final_weights for r in runs],
        weight_history=[r.weight_history for r in runs],
        compile_seconds=float(sum(r.compile_seconds for r in runs)),
        folds=[j % num_folds for j in range(len(seeds))],
    )


FOLDS = 3  # validation folds of every accuracy benchmark


def fold_roles(
    num_valid: int, scheme: str = "shared", *, sort_rest: bool = True
) -> tuple[clean.FoldRoles, ...]:
    """The roles of the ``num_valid`` validation rows in each of the :data:`FOLDS` folds:
    :func:`amal_jax.clean.cross_fit` (seed 0), fold ``i`` selecting on part ``i``.

    ``scheme="shared"``: the other parts are both training (``train``) and hypergradient
    (``meta``) rows, sorted; with ``sort_rest=False`` they are in part order instead (part 0's
    rows, then part 1's, ...: the distillation benchmark's order, which fixes which rows its
    validation batches draw). ``scheme="rotate"``: part ``i + 1`` feeds the hypergradients and
    part ``i + 2`` trains.
    """
    roles = clean.cross_fit(num_valid, FOLDS, scheme=scheme, seed=0)
    if sort_rest:
        return roles
    if scheme != "shared":
        raise ValueError("sort_rest=False applies to scheme='shared' only.")
    parts = [r.select for r in roles]
    out = []
    for i, r in enumerate(roles):
        rest = np.concatenate([parts[j] for j in range(FOLDS) if j != i])
        out.append(r._replace(train=rest, meta=rest))
    return tuple(out)


def cross_fitted(
    roles: Sequence[clean.FoldRoles],
    make: Callable[[clean.FoldRoles], Problem],
    method: Method,
    settings: Settings,
    seeds: Sequence[int],
    *,
    monitor_for: Callable[[int], Monitor | None] | None = None,
) -> Result:
    """``method`` cross-fitted over the validation folds: seed ``j`` trains on
    ``make(roles[j % len(roles)])`` (:func:`rotate`), which selects on that fold's
    ``select`` rows; ``monitor_for`` as in :func:`rotate`."""
    return rotate(
        lambda i: make(roles[i]), len(roles), method, settings, seeds, monitor_for=monitor_for
    )


def tuned(
    name: str, runs: Sequence[Result], labels: Sequence[str], seconds: float
) -> tuple[int, Result]:
    """Tuning on the selection data: the run with the best mean selection score (never test).

    Returns its index and its result named ``"<name> (<its label>)"`` (``name`` alone for an
    empty label), with ``seconds``, ``configs = len(runs)`` and the compile time of them all.
    """
    best = max(range(len(runs)), key=lambda i: np.mean(runs[i].selection))
    label = labels[best]
    return best, dataclasses.replace(
        runs[best],
        method=f"{name} ({label})" if label else name,
        seconds=seconds,
        configs=len(runs),
        compile_seconds=sum(r.compile_seconds for r in runs),
    )


_COMPILE_CACHE_FLAGS = {
    "jax_compilation_cache_dir": None,  # set to the directory
    "jax_persistent_cache_min_compile_time_secs": 0.0,  # cache every program ...
    "jax_persistent_cache_min_entry_size_bytes": 0,  # ... however small
}


@contextlib.contextmanager
def compilation_cache(directory: str | None):
    """JAX's persistent compilation cache in ``directory`` for every program, while inside.

    Each harness run builds fresh jitted functions, so runs of the same shapes (other
    configurations, folds, teacher variants, noise rates) would compile the same programs
    again: compilation, not training, is most of a digits run. With the cache a repeated
    program is compiled once (and read back in later runs). JAX's previous settings are
    restored on exit; an empty ``directory`` changes nothing.
    """
    if not directory:
        yield
        return
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    old = {name: getattr(jax.config, name) for name in _COMPILE_CACHE_FLAGS}
    jax_cache.reset_cache()  # a cache opened earlier in this process would be kept otherwise
    for name, value in _COMPILE_CACHE_FLAGS.items():
        jax.config.update(name, str(directory) if value is None else value)
    try:
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
        jax_cache.reset_cache()
