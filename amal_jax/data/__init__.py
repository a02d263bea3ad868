"""Data sets, features, label models and teachers for the benchmarks.

- Weak supervision from rules (:mod:`amal_jax.data.rules`): the Imply-Loss rules format and
  WRENCH JSON, TF-IDF features; :mod:`amal_jax.data.label_models` (majority vote,
  Dawid-Skene) and :mod:`amal_jax.data.lf_summary` (coverage, overlaps, conflicts, accuracy).
- Classification for distillation (:mod:`amal_jax.data.classification`): digits,
  Fashion-MNIST (Debian package ``dataset-fashion-mnist``), the authors' synthetic set, any
  ``.npz``; symmetric label noise; :mod:`amal_jax.data.teachers` (cached teacher logits).

The core (``amal_jax._src``)
imports nothing from here. scikit-learn is needed for TF-IDF, digits and the synthetic set
(``pip install amal_jax[bench]``).
"""

from amal_jax.data.classification import (
    DATASETS,
    ClassificationData,
    load_classification,
    load_digits,
    load_fashion_mnist,
    load_npz,
    load_synthetic,
    read_idx,
    symmetric_label_noise,
    symmetric_noise,
)
from amal_jax.data.label_models import DawidSkene, MajorityVote, majority_vote
from amal_jax.data.lf_summary import LFSummary, format_lf_summary, lf_summary
from amal_jax.data.rules import (
    BUNDLED_DATASETS,
    TfidfFeatures,
    WeakDataset,
    WeakSplit,
    load_rules_dataset,
    load_weak_dataset,
    load_wrench_dataset,
    tfidf_features,
)
from amal_jax.data.teachers import TeacherConfig, TeacherLogits, train_teacher, train_teachers

__all__ = [
    "BUNDLED_DATASETS",
    "DATASETS",
    "ClassificationData",
    "DawidSkene",
    "LFSummary",
    "MajorityVote",
    "TeacherConfig",
    "TeacherLogits",
    "TfidfFeatures",
    "WeakDataset",
    "WeakSplit",
    "format_lf_summary",
    "lf_summary",
    "load_classification",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_rules_dataset",
    "load_synthetic",
    "load_weak_dataset",
    "load_wrench_dataset",
    "majority_vote",
    "read_idx",
    "symmetric_label_noise",
    "symmetric_noise",
    "tfidf_features",
    "train_teacher",
    "train_teachers",
]
