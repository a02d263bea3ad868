"""Learning from rules: a weak data set as harness problems, and every method as a recipe.

:func:`prepare` turns a rules or WRENCH directory (or a bundled name) into arrays: TF-IDF
features of the texts (fitted on the training texts; with entity spans, also the words
between the entities) and four kinds of loss columns on the training rows:

- ``gold``: cross-entropy to the label of the labelled training rows;
- ``mv``: to the majority vote of the rules on the unlabelled rows (ties abstain);
- ``lm``: KL to the label model's (``LabelModel``) soft labels on the unlabelled covered rows;
- ``lf``: one column per rule, cross-entropy to its vote where it fires.

:func:`recipe` gives one configuration of a named method (:data:`METHODS`) as a
:class:`Recipe`: the validation folds, how each fold's problem is made and the harness
:class:`~amal_jax.recipes.harness.Method`. Every method runs over three validation folds
(:func:`~amal_jax.recipes.harness.fold_roles`), seed ``j`` selecting its epoch on fold
``j % 3``; the other two folds feed its look-aheads and, for the methods that train on
validation labels, are clean training rows too (with the labelled training rows).

Methods (the knobs :func:`recipe` takes in brackets):

- ``labelled``: cross-entropy on the labelled rows only;
- ``labelled+mv`` (``weight``): plus cross-entropy to the majority vote at a fixed weight;
- ``labelled+lm`` (``weight``): plus KL to the label model's soft labels;
- ``l2rw``: learning to reweight over the (gold, MV) losses;
- ``mwn`` (``meta_lr``): Meta-Weight-Net over the (gold, MV) losses;
- ``val``: the validation rows alone; ``labelled+val``: the labelled plus validation rows;
- ``labelled+val+mv`` (``weight``): those clean rows at half of every batch plus the
  majority vote at a fixed weight;
- ``amal_mv`` / ``amal_lm`` / ``amal_lf`` (``meta_lr``, ``meta_every``): a per-example
  table over (gold, MV), (gold, LM) or (gold, one column per rule);
- ``amal_lf_net`` (``meta_lr``, ``meta_every``): one column per rule, mixed by a mixing
  network;
- ``amal_trust`` (``meta_lr``, ``meta_every``, ``trust_init``): the clean rows at half of
  every batch with a fixed weight, one column per rule mixed by
  :func:`amal_jax.trust_table` (a learned trust per rule times a per-example correction);
- ``amal_crossfit`` (``meta_lr``, ``meta_every``): the table over (gold, MV); of the folds,
  one selects, one feeds hypergradients and one trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from amal_jax import clean
from amal_jax.recipes.harness import (
    CLEAN_SHARE,
    TRUST_LR,
    Method,
    Monitor,
    Problem,
    Result,
    Settings,
    append_gold_rows,
    cross_fitted,
    fold_roles,
    resolve_knobs,
)
from amal_jax.weak import format_lf_summary, label_models, lf_summary, rules

METHODS = (
    "labelled",
    "labelled+mv",
    "labelled+lm",
    "l2rw",
    "mwn",
    "val",
    "labelled+val",
    "labelled+val+mv",
    "amal_mv",
    "amal_lf_net",
    "amal_trust",
    "amal_lm",
    "amal_lf",
    "amal_crossfit",
)
AMAL_METHODS = ("amal_mv", "amal_lf_net", "amal_trust", "amal_lm", "amal_lf", "amal_crossfit")
BASELINES = tuple(m for m in METHODS if m not in AMAL_METHODS)
# Methods with a fixed weight on the weak column, and their default weight.
WEIGHTED = {"labelled+mv": 0.3, "labelled+lm": 1.0, "labelled+val+mv": 0.3}
# Meta learning rates by default: the tables (SGD on the normalised hypergradient), the
# mixing network (Adam), the trust mixer, Meta-Weight-Net (Adam).
META_LR = {
    "amal_mv": 0.1,
    "amal_lm": 0.1,
    "amal_lf": 0.1,
    "amal_crossfit": 0.1,
    "amal_lf_net": 1e-3,
    "amal_trust": TRUST_LR,
    "mwn": 1e-3,
}
# The student's first layer (MAX_FEATURES x 64) is most of a step's cost on a CPU; 3000
# n-grams keep the default run within its time budget (10000 took about 4x as long).
MAX_FEATURES = 3000
TRUST_INIT = 0.1  # initial trust of every rule (the clean rows' weight is 1)


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
    roles: tuple  # per fold, the validation rows' FoldRoles (harness.fold_roles, "shared")
    lf_table: str  # the LF summary on the validation split, printable
    lf_stats: Any = None  # the LFSummary on the validation split (coverage, accuracy)
    class_names: tuple[str, ...] = ()
    train_votes: np.ndarray | None = None  # [N, m] the rules' votes, -1 abstains
    train_ids: tuple[str, ...] = ()  # the data's own row ids (WRENCH keys, file:line)
    test_ids: tuple[str, ...] = ()


def prepare(name_or_path: str, max_features: int = MAX_FEATURES) -> RulesData:
    """The arrays of a bundled data set (``sms``, ``youtube``, ``semeval``) or a directory."""
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
    lm_model = label_models.LabelModel(c).fit(train.L, np.where(train.labelled, train.y, -1))
    lm = np.asarray(lm_model.predict_proba(train.L), np.float32)
    covered = (train.L != -1).any(axis=1)
    votes = np.where(train.L >= 0, train.L, 0)
    lf_mask = (train.L >= 0) & unlabelled[:, None]
    stats = lf_summary(ds.valid.L, ds.valid.y, lf_names=ds.lf_names, class_names=ds.class_names)
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
        roles=fold_roles(len(ds.valid)),
        lf_table=format_lf_summary(stats, max_rows=15),
        lf_stats=stats,
        class_names=tuple(ds.class_names),
        train_votes=np.asarray(train.L),
        train_ids=tuple(train.ids),
        test_ids=tuple(ds.test.ids),
    )


def _names(prefix: str, rows) -> np.ndarray:
    return np.asarray([f"{prefix}:{int(i)}" for i in rows], dtype=object)


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
    ids = _names("train", range(len(x)))
    if extra is not None:
        x, t, m = append_gold_rows(
            x, t, m, data.x_valid[extra], data.y_valid[extra], data.num_classes
        )
        ids = np.concatenate([ids, _names("valid", extra)])
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
        row_ids=ids[keep],
    )


def clean_problem(data: RulesData, columns: str, roles) -> Problem:
    """A cross-fitted problem: the labelled rows and ``roles.train`` validation rows are clean
    training rows (their own column, weight 1); ``columns`` (``none`` / ``mv`` / ``lf``) are
    the weak columns on the unlabelled rows; ``roles.meta`` feeds hypergradients and
    ``roles.select`` selects."""
    labelled = data.gold_mask > 0
    if columns == "mv":
        t, m, names = data.mv[:, None], data.mv_mask[:, None], ("mv",)
    elif columns == "lf":
        t, m = data.lf, data.lf_mask
        names = tuple(f"lf{j}" for j in range(data.lf.shape[1]))
    elif columns == "none":
        t, m, names = data.mv[:, None], np.zeros_like(data.mv_mask[:, None]), ("none",)
    else:
        raise ValueError(f"unknown columns {columns!r}")
    keep = ~labelled & m.any(axis=1)
    return Problem(
        name=data.name,
        x_train=data.x_train[keep],
        targets=t[keep],
        mask=m[keep],
        temperatures=(1.0,) * t.shape[1],
        columns=names,
        x_meta=data.x_valid[roles.meta],
        y_meta=data.y_valid[roles.meta],
        x_sel=data.x_valid[roles.select],
        y_sel=data.y_valid[roles.select],
        x_test=data.x_test,
        y_test=data.y_test,
        num_classes=data.num_classes,
        x_clean=np.concatenate([data.x_train[labelled], data.x_valid[roles.train]]),
        y_clean=np.concatenate([np.argmax(data.gold[labelled], 1), data.y_valid[roles.train]]),
        row_ids=_names("train", np.flatnonzero(keep)),
        clean_ids=np.concatenate(
            [_names("train", np.flatnonzero(labelled)), _names("valid", roles.train)]
        ),
    )


def val_only(data: RulesData, roles) -> Problem:
    """Like :func:`clean_problem` with no weak rows and no labelled rows: the validation rows."""
    p = clean_problem(data, "none", roles)
    return dataclasses.replace(
        p,
        x_clean=data.x_valid[roles.train],
        y_clean=data.y_valid[roles.train],
        clean_ids=_names("valid", roles.train),
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One configuration of a method on a data set: the validation folds' roles, how each
    fold's problem is made and the harness method; :meth:`run` trains it cross-fitted."""

    name: str
    roles: tuple[clean.FoldRoles, ...]
    make: Callable[[clean.FoldRoles], Problem]
    method: Method
    knobs: dict = dataclasses.field(default_factory=dict)  # the knob values it uses

    def run(
        self,
        settings: Settings,
        seeds: Sequence[int],
        *,
        monitor_for: Callable[[int], Monitor | None] | None = None,
    ) -> Result:
        """The method over the folds (seed ``j`` selects on fold ``j % folds``)."""
        return cross_fitted(
            self.roles, self.make, self.method, settings, seeds, monitor_for=monitor_for
        )


def knobs_of(method: str) -> tuple[str, ...]:
    """The knobs :func:`recipe` uses for ``method`` (the others must stay None)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if method in WEIGHTED:
        return ("weight",)
    if method == "mwn":
        return ("meta_lr",)
    if method == "amal_trust":
        return ("meta_lr", "meta_every", "trust_init")
    if method in AMAL_METHODS:
        return ("meta_lr", "meta_every")
    return ()


def default_knobs(method: str) -> dict:
    """The knob values :func:`recipe` uses for ``method`` when none is given."""
    values = {
        "weight": WEIGHTED.get(method),
        "meta_lr": META_LR.get(method),
        "meta_every": 1,
        "trust_init": TRUST_INIT,
    }
    return {k: values[k] for k in knobs_of(method)}


def recipe(
    data: RulesData,
    method: str,
    *,
    weight: float | None = None,
    meta_lr: float | None = None,
    meta_every: int | None = None,
    trust_init: float | None = None,
) -> Recipe:
    """One configuration of ``method`` (:data:`METHODS`) on ``data``.

    Knobs left None take the method's default (:data:`WEIGHTED`, :data:`META_LR`,
    ``meta_every=1``, :data:`TRUST_INIT`); a knob the method does not use must be None.
    """
    given = {"weight": weight, "meta_lr": meta_lr, "meta_every": meta_every}
    given["trust_init"] = trust_init
    knobs = resolve_knobs(method, given, knobs_of(method), default_knobs(method))
    weight, meta_lr = knobs.get("weight"), knobs.get("meta_lr")
    meta_every, trust_init = knobs.get("meta_every", 1), knobs.get("trust_init")

    def make(run):
        return Recipe(method, data.roles, run[0], run[1], knobs)

    def weak(columns):
        return lambda roles: problem(data, columns, sel=roles.select, meta=roles.meta)

    if method == "labelled":
        return make((weak("gold"), _fixed(method, 1)))
    if method == "labelled+mv":
        return make((weak("gold+mv"), _fixed(method, 2, weight)))
    if method == "labelled+lm":
        return make((weak("gold+lm"), _fixed(method, 2, weight)))
    if method == "l2rw":
        return make((weak("gold+mv"), Method(method, method)))
    if method == "mwn":
        return make((weak("gold+mv"), Method(method, method, meta_lr=meta_lr)))
    if method == "val":
        return make((lambda r: val_only(data, r), _fixed(method, 1, 0.0)))
    if method == "labelled+val":
        return make((lambda r: clean_problem(data, "none", r), _fixed(method, 1, 0.0)))
    if method == "labelled+val+mv":
        m = Method(method, "fixed", weights=(weight,), clean_share=CLEAN_SHARE)
        return make((lambda r: clean_problem(data, "mv", r), m))
    if method == "amal_trust":
        m = Method(
            method,
            "amal",
            mixer="trust",
            weights=(trust_init,) * data.lf.shape[1],
            meta_lr=meta_lr,
            clean_share=CLEAN_SHARE,
            meta_every=meta_every,
        )
        return make((lambda r: clean_problem(data, "lf", r), m))
    if method == "amal_crossfit":
        # Fold i selects on part i, part i + 1 feeds the hypergradients, part i + 2 trains.
        def crossfit(roles):
            return problem(data, "gold+mv", sel=roles.select, meta=roles.meta, extra=roles.train)

        return Recipe(
            method,
            fold_roles(len(data.y_valid), "rotate"),
            crossfit,
            _amal(method, 2, meta_lr, meta_every=meta_every),
            knobs,
        )
    columns = {
        "amal_mv": "gold+mv",
        "amal_lm": "gold+lm",
        "amal_lf": "gold+lf",
        "amal_lf_net": "gold+lf",
    }[method]
    mixer = "network" if method == "amal_lf_net" else "table"
    k = 2 if columns != "gold+lf" else 1 + data.lf.shape[1]
    return make((weak(columns), _amal(method, k, meta_lr, mixer, meta_every)))


def _fixed(name: str, k: int, aux: float = 1.0) -> Method:
    return Method(name, "fixed", weights=(1.0,) + (aux,) * (k - 1))


def _amal(name: str, k: int, lr: float, mixer: str = "table", meta_every: int = 1) -> Method:
    if mixer == "network":
        return Method(
            name,
            "amal",
            weights=(1.0,) * k,
            mixer="network",
            meta_lr=lr,
            meta_optimizer="adam",
            meta_every=meta_every,
        )
    return Method(name, "amal", weights=(1.0,) * k, meta_lr=lr, meta_every=meta_every)
