"""Distillation: a classification data set and its teachers as harness problems, and every
method as a recipe.

:func:`prepare` loads a data set (``digits``, ``fashion_mnist``, ``synthetic`` or a ``.npz``)
with symmetric label noise, and trains (or reads from a cache) its teachers: a CNN when the
features are images, else a 512-512 MLP, then MLPs (:func:`teacher_configs`). The loss
matrix is ``[B, 1 + M]``: cross-entropy to the (noisy) label and ``T^2 KL`` to each teacher
at temperature :data:`TEMPERATURE`.

:func:`recipe` gives one configuration of a named method (:data:`METHODS`) as a
:class:`~amal_jax.recipes.rules.Recipe`. Every method runs over three validation folds
(seed ``j`` selects its epoch on fold ``j % 3``); the other two folds feed its look-aheads
and, for the ``+val`` methods and ``amal_trust``, are training rows too.

Methods (the knobs :func:`recipe` takes in brackets):

- ``ce``: cross-entropy to the label only;
- ``kd`` (``alpha``): the fixed mix ``(1 - alpha) CE + alpha KD`` (with several teachers,
  ``alpha`` split evenly over them);
- ``l2rw``: learning to reweight over every loss column;
- ``mwn`` (``meta_lr``): Meta-Weight-Net over every loss column;
- ``amal_paper``: the authors' preset scaled to the epoch budget (a table starting at CE 0.1
  and KD 0.9, head-only look-ahead, 5 meta steps of plain gradient descent with learning
  rate 1500, a refresh pass after a warm-up and then periodically);
- ``amal_exact`` (``alpha``, ``meta_lr``, ``meta_every``): the per-example table starting
  at ``alpha``'s mix, whole-network look-ahead, normalised hypergradient, SGD;
- ``amal_net`` (``alpha``, ``meta_lr``, ``meta_every``): a mixing network over the
  per-example losses (Adam), starting at ``alpha``'s mix;
- ``ce+val``, ``kd+val`` (``alpha``), ``val``: with the validation rows of the other folds
  as cross-entropy training rows (``val``: those rows alone);
- ``amal_trust`` (``alpha``, ``meta_lr``, ``meta_every``): the other folds' rows at half of
  every batch (their own column, weight 1) and as hypergradient rows, the label and teacher
  columns mixed by :func:`amal_jax.trust_table` starting at ``alpha``'s mix.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from amal_jax.distill import classification, teachers
from amal_jax.recipes.harness import (
    CLEAN_SHARE,
    TRUST_LR,
    Method,
    Problem,
    Settings,
    append_gold_rows,
    fold_roles,
    resolve_knobs,
)
from amal_jax.recipes.rules import Recipe

TEMPERATURE = 4.0
TEACHER_LABELS = ("noisy", "clean")
MAX_TEACHERS = 3
METHODS = (
    "ce",
    "kd",
    "l2rw",
    "mwn",
    "amal_paper",
    "amal_exact",
    "amal_net",
    "ce+val",
    "kd+val",
    "val",
    "amal_trust",
)
ALPHA = 0.5  # the default weight of the distillation loss (kd, kd+val, the AMAL starts)
# Meta learning rates by default: the table (SGD on the normalised hypergradient), the
# mixing network (Adam), the trust mixer, Meta-Weight-Net (Adam).
META_LR = {"amal_exact": 0.1, "amal_net": 1e-3, "amal_trust": TRUST_LR, "mwn": 1e-3}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A data set, its label noise and teachers; ``teacher_labels``: what the teachers were
    trained on (the noisy training labels or the clean ones)."""

    data: str
    noise: float
    teachers: int = 1
    teacher_labels: str = "noisy"

    def __post_init__(self):
        if self.teacher_labels not in TEACHER_LABELS:
            raise ValueError(
                f"teacher_labels must be one of {TEACHER_LABELS}; got {self.teacher_labels!r}."
            )
        if not 1 <= self.teachers <= MAX_TEACHERS:
            raise ValueError(f"teachers must be between 1 and {MAX_TEACHERS}; got {self.teachers}.")
        if self.noise == 0 and self.teacher_labels != "clean":
            # Without noise the training labels are clean: one name for one setting.
            object.__setattr__(self, "teacher_labels", "clean")

    @property
    def label(self) -> str:
        return (
            f"{self.data} noise {self.noise:.0%} teachers {self.teachers} ({self.teacher_labels})"
        )


@dataclasses.dataclass(frozen=True)
class Budget:
    """Student, training budget and teachers of one data set (CPU, 2 cores)."""

    hidden: tuple[int, ...]  # the student: () is a linear model
    epochs: int
    learning_rate: float = 1e-3
    batch_size: int = 64
    options: dict = dataclasses.field(default_factory=dict)  # passed to the loader
    cnn: teachers.TeacherConfig | None = None  # first teacher when the data are images
    mlp_epochs: int = 10  # epochs of the MLP teachers


_CNN = dict(kind="cnn", conv=(32, 64), hidden=(256,), dropout=0.5, weight_decay=0.5)
BUDGET = {
    "digits": Budget(
        hidden=(), epochs=20, learning_rate=1e-2, cnn=teachers.TeacherConfig(**_CNN, epochs=30)
    ),
    "fashion_mnist": Budget(
        hidden=(),
        epochs=10,
        learning_rate=3e-3,
        batch_size=128,
        options={"max_train": 10000},
        cnn=teachers.TeacherConfig(**_CNN, epochs=10),
        mlp_epochs=5,
    ),
    "synthetic": Budget(hidden=(32,), epochs=40),
}
# Other data (.npz files): a 32-unit MLP student, a CNN teacher if the rows are images.
DEFAULT_BUDGET = Budget(hidden=(32,), epochs=40, cnn=teachers.TeacherConfig(**_CNN, epochs=20))


def budget_for(data: str) -> Budget:
    return BUDGET.get(data, DEFAULT_BUDGET)


def teacher_configs(data: classification.ClassificationData, budget: Budget, count: int):
    """The first ``count`` teachers: a CNN for images (else a 512-512 MLP), then MLPs."""
    shape = teachers.guess_image_shape(data)
    if shape is not None and budget.cnn is not None:
        first = dataclasses.replace(budget.cnn, image_shape=shape, seed=0)
        others = ((512, 512), (32,))
    else:
        first = teachers.TeacherConfig(hidden=(512, 512), epochs=5, seed=0)
        others = ((128,), (32,))
    configs = [first] + [
        teachers.TeacherConfig(hidden=h, epochs=budget.mlp_epochs, seed=1 + i)
        for i, h in enumerate(others)
    ]
    return configs[:count]


@dataclasses.dataclass(frozen=True)
class KDData:
    """A setting's data and teachers, with the validation folds' roles."""

    data: classification.ClassificationData  # the student's data (noisy y_train)
    teacher_logits: tuple[teachers.TeacherLogits, ...]
    # Per fold, the validation rows' FoldRoles (harness.fold_roles, "shared", the other folds
    # in fold order): ``select`` selects, ``meta`` (= ``train``) feeds look-aheads or trains.
    roles: tuple
    setting: Setting | None = None


def prepare(setting: Setting, cache_dir: str = ".cache/teachers") -> KDData:
    """The setting's data (noisy labels) and teachers (trained, or read from ``cache_dir``)."""
    budget = budget_for(setting.data)
    load = dict(seed=0, **budget.options)
    data = classification.load_classification(setting.data, noise_rate=setting.noise, **load)
    # Noise is drawn after loading, so the clean data have the same splits and features.
    source = (
        data
        if setting.teacher_labels == "noisy"
        else classification.load_classification(setting.data, **load)
    )
    configs = teacher_configs(data, budget, setting.teachers)
    logits = teachers.train_teachers(source, configs, cache_dir=cache_dir)
    return KDData(data, logits, fold_roles(len(data.y_valid), sort_rest=False), setting)


def problem(kd: KDData, *, columns: int, sel, meta, extra=None, train_rows: bool = True) -> Problem:
    """Columns: 0 = CE to the label; 1..M = KD to each teacher (``columns = 1 + M``).

    ``extra``: validation rows added as cross-entropy-only training rows; ``train_rows=False``
    leaves out the training set (the student then learns from ``extra`` alone).
    """
    d = kd.data
    eye = np.eye(d.num_classes, dtype=np.float32)
    targets = [eye[d.y_train][:, None]]
    for t in kd.teacher_logits[: columns - 1]:
        targets.append(teachers.softmax(t.train, TEMPERATURE)[:, None])
    t = np.concatenate(targets, axis=1)
    m = np.ones(t.shape[:2], np.float32)
    x = d.x_train
    ids = _names("train", range(len(x)))
    if not train_rows:
        x, t, m, ids = x[:0], t[:0], m[:0], ids[:0]
    if extra is not None:
        x, t, m = append_gold_rows(x, t, m, d.x_valid[extra], d.y_valid[extra], d.num_classes)
        ids = np.concatenate([ids, _names("valid", extra)])
    return Problem(
        name=d.name,
        x_train=x,
        targets=t,
        mask=m,
        temperatures=(1.0,) + (TEMPERATURE,) * (columns - 1),
        columns=("ce", *tuple(f"kd{j}" for j in range(columns - 1))),
        x_meta=d.x_valid[meta],
        y_meta=d.y_valid[meta],
        x_sel=d.x_valid[sel],
        y_sel=d.y_valid[sel],
        x_test=d.x_test,
        y_test=d.y_test,
        num_classes=d.num_classes,
        row_ids=ids,
    )


def mix(alpha: float, teachers_: int) -> tuple[float, ...]:
    """The initial or fixed weights ``(1 - alpha, alpha / M, ..., alpha / M)``."""
    return (1.0 - alpha,) + (alpha / teachers_,) * teachers_


def settings_for(
    data: str, epochs: int | None = None, hidden: tuple[int, ...] | None = None
) -> Settings:
    """The harness settings of ``data``'s budget (selection by accuracy); ``epochs`` and
    ``hidden`` (the student MLP's layers, ``()`` for linear) override the budget's."""
    budget = budget_for(data)
    return Settings(
        hidden=budget.hidden if hidden is None else tuple(hidden),
        epochs=epochs or budget.epochs,
        learning_rate=budget.learning_rate,
        batch_size=budget.batch_size,
        select_metric="accuracy",
    )


def knobs_of(method: str) -> tuple[str, ...]:
    """The knobs :func:`recipe` uses for ``method`` (the others must stay None)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if method in ("kd", "kd+val"):
        return ("alpha",)
    if method == "mwn":
        return ("meta_lr",)
    if method in ("amal_exact", "amal_net", "amal_trust"):
        return ("alpha", "meta_lr", "meta_every")
    return ()


def default_knobs(method: str) -> dict:
    """The knob values :func:`recipe` uses for ``method`` when none is given."""
    values = {"alpha": ALPHA, "meta_lr": META_LR.get(method), "meta_every": 1}
    return {k: values[k] for k in knobs_of(method)}


def recipe(
    kd: KDData,
    method: str,
    *,
    alpha: float | None = None,
    meta_lr: float | None = None,
    meta_every: int | None = None,
    epochs: int | None = None,
) -> Recipe:
    """One configuration of ``method`` (:data:`METHODS`) on ``kd``'s data and teachers.

    Knobs left None take the method's default (``alpha`` :data:`ALPHA`, :data:`META_LR`,
    ``meta_every=1``); a knob the method does not use must be None. ``epochs`` (the
    training budget, default the data set's) scales ``amal_paper``'s schedule.
    """
    given = {"alpha": alpha, "meta_lr": meta_lr, "meta_every": meta_every}
    knobs = resolve_knobs(method, given, knobs_of(method), default_knobs(method))
    alpha = knobs.get("alpha", ALPHA)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
    meta_lr, meta_every = knobs.get("meta_lr"), knobs.get("meta_every", 1)
    count = len(kd.teacher_logits)
    columns = 1 + count
    weights = mix(alpha, count)

    def weak(cols=columns):
        return lambda r: problem(kd, columns=cols, sel=r.select, meta=r.meta)

    def with_val(cols, train_rows=True):
        return lambda r: problem(
            kd, columns=cols, sel=r.select, meta=r.meta, extra=r.meta, train_rows=train_rows
        )

    def made(make, m):
        return Recipe(method, kd.roles, make, m, knobs)

    if method == "ce":
        return made(weak(1), Method(method, "fixed", weights=(1.0,)))
    if method == "kd":
        return made(weak(), Method(method, "fixed", weights=weights))
    if method == "l2rw":
        return made(weak(), Method(method, "l2rw"))
    if method == "mwn":
        return made(weak(), Method(method, "mwn", meta_lr=meta_lr))
    if method == "amal_paper":
        if epochs is None:
            if kd.setting is None:
                raise ValueError("amal_paper needs epochs= (its schedule scales with them).")
            epochs = budget_for(kd.setting.data).epochs
        phase = max(1, epochs // 5)
        m = Method(
            method,
            "amal",
            weights=mix(0.9, count),
            meta_lr=1500.0,
            normalize=False,
            meta_steps=5,
            refresh_every=phase,
            warmup_epochs=phase,
            head_only=True,
        )
        return made(weak(), m)
    if method == "amal_exact":
        m = Method(method, "amal", weights=weights, meta_every=meta_every, meta_lr=meta_lr)
        return made(weak(), m)
    if method == "amal_net":
        m = Method(
            method,
            "amal",
            weights=weights,
            meta_every=meta_every,
            mixer="network",
            meta_lr=meta_lr,
            meta_optimizer="adam",
        )
        return made(weak(), m)
    if method == "ce+val":
        return made(with_val(1), Method(method, "fixed", weights=(1.0,)))
    if method == "kd+val":
        return made(with_val(columns), Method(method, "fixed", weights=weights))
    if method == "val":
        return made(with_val(1, train_rows=False), Method(method, "fixed", weights=(1.0,)))
    # amal_trust: clean rows both ways.
    d = kd.data

    def trust(r):
        p = problem(kd, columns=columns, sel=r.select, meta=r.meta)
        return dataclasses.replace(
            p,
            x_clean=d.x_valid[r.meta],
            y_clean=d.y_valid[r.meta],
            clean_ids=_names("valid", r.meta),
        )

    m = Method(
        method,
        "amal",
        weights=weights,
        meta_every=meta_every,
        mixer="trust",
        meta_lr=meta_lr,
        clean_share=CLEAN_SHARE,
    )
    return made(trust, m)


def _names(prefix: str, rows) -> np.ndarray:
    return np.asarray([f"{prefix}:{int(i)}" for i in rows], dtype=object)
