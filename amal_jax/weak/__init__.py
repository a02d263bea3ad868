"""Weak supervision from rules: data formats, features, labelling-function summaries, label models.

- :mod:`amal_jax.weak.rules`: the Imply-Loss rules format and WRENCH JSON (a
  :class:`WeakDataset` of ``train`` / ``valid`` / ``test`` :class:`WeakSplit`), the bundled
  SMS, YouTube and SemEval sets, TF-IDF features;
- :mod:`amal_jax.weak.label_models`: majority vote, the Snorkel-like :class:`LabelModel`
  (the default) and Dawid-Skene;
- :mod:`amal_jax.weak.lf_summary`: coverage, overlaps, conflicts and accuracy per rule.

Imported on use (``import amal_jax.weak``, or the attribute ``amal_jax.weak``):
``import amal_jax`` does not load it. The core (``amal_jax._src``) imports nothing from here.
TF-IDF needs scikit-learn (``pip install amal_jax[bench]``).
"""

from amal_jax.weak.label_models import DawidSkene, LabelModel, MajorityVote, majority_vote
from amal_jax.weak.lf_summary import LFSummary, format_lf_summary, lf_summary
from amal_jax.weak.rules import (
    BUNDLED_DATASETS,
    TfidfFeatures,
    WeakDataset,
    WeakSplit,
    load_rules_dataset,
    load_weak_dataset,
    load_wrench_dataset,
    tfidf_features,
)

__all__ = [
    "BUNDLED_DATASETS",
    "DawidSkene",
    "LFSummary",
    "LabelModel",
    "MajorityVote",
    "TfidfFeatures",
    "WeakDataset",
    "WeakSplit",
    "format_lf_summary",
    "lf_summary",
    "load_rules_dataset",
    "load_weak_dataset",
    "load_wrench_dataset",
    "majority_vote",
    "tfidf_features",
]
