"""Distillation data: classification sets, label noise, teachers and their logit cache.

- :mod:`amal_jax.distill.classification`: digits, Fashion-MNIST (Debian package
  ``dataset-fashion-mnist``), the authors' synthetic set and any ``.npz`` as a
  :class:`ClassificationData` (``train`` / ``valid`` / ``test`` splits, the validation split
  always clean); symmetric label noise;
- :mod:`amal_jax.distill.models`: the MLP and CNN shared by the teachers and the benchmarks;
- :mod:`amal_jax.distill.teachers`: teacher training and its on-disk logit cache.

Imported on use (``import amal_jax.distill``, or the attribute ``amal_jax.distill``):
``import amal_jax`` does not load it. The core (``amal_jax._src``) imports nothing from here.
Digits and the synthetic set need scikit-learn (``pip install amal_jax[bench]``).
"""

from amal_jax.distill.classification import (
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
from amal_jax.distill.models import MLP, TeacherCNN
from amal_jax.distill.teachers import (
    TeacherConfig,
    TeacherLogits,
    softmax,
    train_teacher,
    train_teachers,
)

__all__ = [
    "DATASETS",
    "MLP",
    "ClassificationData",
    "TeacherCNN",
    "TeacherConfig",
    "TeacherLogits",
    "load_classification",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_synthetic",
    "read_idx",
    "softmax",
    "symmetric_label_noise",
    "symmetric_noise",
    "train_teacher",
    "train_teachers",
]
