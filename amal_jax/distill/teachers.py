"""Teacher networks for distillation, with their logits cached on disk.

A teacher is a Flax Linen model trained with optax Adam on the (possibly noisy) training
labels of a :class:`~amal_jax.distill.classification.ClassificationData`: an MLP
(``kind="mlp"``, :class:`~amal_jax.distill.models.MLP`) or a small CNN over the features
reshaped to images (``kind="cnn"``, :class:`~amal_jax.distill.models.TeacherCNN`). What the
students need is only its logits on the train / valid / test splits, so
:func:`train_teacher` returns those (computed in eval mode: no dropout) and caches them as
an ``.npz`` file keyed by a SHA-256 of the data's arrays and the full
:class:`TeacherConfig`::

    data = load_classification("digits", noise_rate=0.4)
    teacher = train_teacher(data, TeacherConfig(hidden=(128,), epochs=20), cache_dir=".cache")
    teacher.train.shape, teacher.test_accuracy, teacher.from_cache  # ((N, 10), 0.93, False)
    cnn = TeacherConfig(kind="cnn", conv=(16, 32), hidden=(64,), epochs=20)
    train_teacher(data, cnn)  # the 64 features as 8 x 8 x 1 images (data.image_shape)

A rerun with the same data and config reads the file instead of training; any change of a
label, a feature, or a config field gives a new key and so a new file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amal_jax.distill.classification import ClassificationData
from amal_jax.distill.models import DEFAULT_CONV, MLP, TEACHER_NAMES, TeacherCNN

__all__ = [
    "CACHE_FORMAT",
    "TeacherConfig",
    "TeacherLogits",
    "default_cache_dir",
    "fit_teacher",
    "guess_image_shape",
    "softmax",
    "teacher_cache_key",
    "teacher_logits",
    "train_teacher",
    "train_teachers",
]

PyTree = Any

#: Version of the cache key and file layout; bump it when either changes (or when training
#: changes in a way that changes the logits) so old files are never read back.
#: Format 2 added ``kind``, ``conv`` and ``image_shape`` to the hashed config.
CACHE_FORMAT = 2

KINDS = ("mlp", "cnn")

# Below this side a square number of features is not taken for an image (a 16- or
# 49-feature table is more likely tabular data than a 4x4 or 7x7 picture).
_MIN_GUESSED_SIDE = 8

# Rows per forward pass when computing logits; every chunk is padded to this size so the
# jitted forward compiles once for all splits.
_EVAL_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines a teacher (and so its cache key).

    Fields:
        hidden: hidden layer widths, e.g. ``(512, 512)`` (the paper's Fashion-MNIST teacher)
            or ``(128,)``; ``()`` is a linear model. For a CNN: the dense layers after the
            convolutions.
        epochs: passes over the training set.
        learning_rate: Adam's step size.
        batch_size: examples per step; the last partial batch of each (reshuffled) epoch is
            dropped so every step has one shape. Capped at the training set size.
        seed: initialisation, shuffling and dropout.
        dropout: dropout rate after each hidden layer during training (never at inference).
        weight_decay: decoupled weight decay (AdamW) if positive; plain Adam if 0.
        kind: ``"mlp"`` (:class:`~amal_jax.distill.models.MLP`, layers ``hidden_<i>`` and
            ``logits``) or ``"cnn"`` (:class:`~amal_jax.distill.models.TeacherCNN`).
        conv: a CNN's convolution widths (3x3, SAME padding, stride 2 while the feature
            map is at least 2x2, ReLU); default ``(32, 64)`` for a CNN. An MLP has none
            (``None`` or ``()``; anything else is a ``ValueError``).
        image_shape: a CNN's ``(H, W, C)``: each row of ``D = H * W * C`` features is read
            as a channels-last image. ``None``: the data's ``image_shape`` if it has one,
            else a square ``(s, s, 1)`` when ``D = s * s``; the cache key hashes the
            resolved shape. Must be ``None`` for an MLP.
    """

    hidden: tuple[int, ...] = (512, 512)
    epochs: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    dropout: float = 0.0
    weight_decay: float = 0.0
    kind: str = "mlp"
    conv: tuple[int, ...] | None = None
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}.")
        conv = self.conv
        if conv is None:
            conv = DEFAULT_CONV if self.kind == "cnn" else ()
        try:
            conv = tuple(conv)
        except TypeError:
            raise ValueError(f"conv must be a sequence of widths; got {self.conv!r}.") from None
        for width in conv:
            _check_int("each conv width", width, 1)
        if self.kind == "mlp" and conv:
            raise ValueError(f"an MLP teacher has no convolutions; got conv={self.conv!r}.")
        if self.kind == "cnn" and not conv:
            raise ValueError("a CNN teacher needs at least one convolution width in conv.")
        object.__setattr__(self, "conv", tuple(int(w) for w in conv))
        if self.image_shape is not None:
            if self.kind != "cnn":
                raise ValueError("image_shape applies to CNN teachers only (kind='cnn').")
            object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
        try:
            hidden = tuple(self.hidden)
        except TypeError:
            raise ValueError(f"hidden must be a sequence of widths; got {self.hidden!r}.") from None
        for width in hidden:
            _check_int("each hidden width", width, 1)
        object.__setattr__(self, "hidden", tuple(int(w) for w in hidden))
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        for name, low_open in (("learning_rate", True), ("weight_decay", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number; got {value!r}.")
            if not math.isfinite(value) or value < 0 or (low_open and value == 0):
                bound = "positive" if low_open else "non-negative"
                raise ValueError(f"{name} must be finite and {bound}; got {value!r}.")
            object.__setattr__(self, name, float(value))
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {self.dropout!r}.")
        object.__setattr__(self, "dropout", float(self.dropout))


def guess_image_shape(data: ClassificationData) -> tuple[int, int, int] | None:
    """The image shape a CNN teacher should read ``data``'s rows as, or None (use an MLP).

    The rule: the data's own ``image_shape`` (digits, Fashion-MNIST, an ``.npz`` with an
    ``image_shape`` entry) if it has one; else ``(s, s, 1)`` when the number of features is
    a perfect square ``D = s * s`` with ``s >= 8``; else None.

    Example:
        >>> from amal_jax.distill.classification import load_digits
        >>> guess_image_shape(load_digits())
        (8, 8, 1)
    """
    if not isinstance(data, ClassificationData):
        raise ValueError(f"guess_image_shape needs a ClassificationData; got {data!r}.")
    if data.image_shape is not None:
        return tuple(data.image_shape)
    side = math.isqrt(data.num_features)
    if side * side == data.num_features and side >= _MIN_GUESSED_SIDE:
        return (side, side, 1)
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherLogits:
    """A trained teacher's logits on each split, and how it did.

    Fields:
        train: ``[N, C]`` float32 logits on ``x_train`` (eval mode).
        valid: ``[V, C]`` float32 logits on ``x_valid``.
        test: ``[T, C]`` float32 logits on ``x_test``.
        test_accuracy: accuracy of ``test`` against the (clean) ``y_test``.
        valid_accuracy: accuracy of ``valid`` against the (clean) ``y_valid``.
        train_seconds: wall time of the original training (also when read from the cache).
        from_cache: True if the logits were read from the cache, False if just trained.
        cache_key: the SHA-256 hex key of data and config (:func:`teacher_cache_key`).
        cache_path: the cache file, or None when caching was off.
        config: the :class:`TeacherConfig`.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    test_accuracy: float
    valid_accuracy: float
    train_seconds: float
    from_cache: bool
    cache_key: str
    cache_path: pathlib.Path | None
    config: TeacherConfig

    def __repr__(self) -> str:
        return (
            f"TeacherLogits(kind={self.config.kind!r}, conv={self.config.conv}, "
            f"hidden={self.config.hidden}, epochs={self.config.epochs}, "
            f"test_accuracy={self.test_accuracy:.4f}, from_cache={self.from_cache}, "
            f"key={self.cache_key[:12]})"
        )


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/amal_jax/teachers``, i.e. ``~/.cache/amal_jax/teachers`` by default.

    Example:
        >>> default_cache_dir().parts[-2:]
        ('amal_jax', 'teachers')
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "amal_jax" / "teachers"


def teacher_cache_key(data: ClassificationData, config: TeacherConfig) -> str:
    """SHA-256 hex digest of everything the teacher's logits depend on.

    Hashes :data:`CACHE_FORMAT`, every :class:`TeacherConfig` field (a CNN's ``image_shape``
    as resolved for ``data``), ``num_classes``, and the
    dtype, shape and bytes of ``x_train``, ``y_train`` (the possibly noisy labels the teacher
    learns from), ``x_valid``, ``y_valid``, ``x_test`` and ``y_test``. The data set's name is
    not hashed: the contents decide.

    Example:
        >>> from amal_jax.distill.classification import load_digits, symmetric_noise
        >>> data = load_digits()
        >>> key = teacher_cache_key(data, TeacherConfig())
        >>> len(key), key == teacher_cache_key(symmetric_noise(data, 0.1, seed=0), TeacherConfig())
        (64, False)
    """
    _check_inputs(data, config)
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "config": dataclasses.asdict(_resolve(config, data.num_features, data)),
        "num_classes": data.num_classes,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for field in ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test"):
        array = np.ascontiguousarray(getattr(data, field))
        # Hashed under the fields' earlier names (x_val, y_val): the same data, the same key.
        label = _HASHED_NAMES.get(field, field)
        digest.update(f"|{label}:{array.dtype.str}:{array.shape}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def fit_teacher(data: ClassificationData, config: TeacherConfig) -> PyTree:
    """Trains ``config``'s teacher on ``data.x_train`` / ``data.y_train``; no cache involved.

    Softmax cross-entropy, optax Adam (AdamW with ``weight_decay``), reshuffled every epoch;
    each epoch is one jitted ``lax.scan`` over its batches.

    Args:
        data: the data; the teacher learns the (possibly noisy) ``y_train``.
        config: the teacher.

    Returns:
        The Flax variables ``{"params": ...}`` of ``config``'s MLP or CNN.

    Example:
        >>> from amal_jax.distill.classification import load_digits
        >>> params = fit_teacher(load_digits(), TeacherConfig(hidden=(8,), epochs=1))
        >>> params["params"]["logits"]["kernel"].shape
        (8, 10)
    """
    _check_inputs(data, config)
    n = data.x_train.shape[0]
    if n == 0:
        raise ValueError("cannot train a teacher on an empty training set.")
    static = _Static(
        arch=_arch(_resolve(config, data.num_features, data), data.num_classes),
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        batch_size=min(config.batch_size, n),
    )
    init_key, shuffle_key, dropout_key = jax.random.split(jax.random.key(config.seed), 3)
    x = jnp.asarray(data.x_train)
    y = jnp.asarray(data.y_train)
    variables = static.model().init(init_key, x[:1])
    opt_state = static.optimizer().init(variables)
    for epoch in range(config.epochs):
        if static.arch.kind == "cnn":
            # XLA's CPU backend runs convolutions inside a loop (the scan of _run_epoch)
            # several times slower than at the top level of a jitted function, so CNN
            # epochs are a Python loop over jitted steps (same batches, same keys).
            batches, epoch_key = _epoch_batches(shuffle_key, dropout_key, epoch, n, static)
            for step in range(batches.shape[0]):
                variables, opt_state, _ = _jit_step(
                    variables, opt_state, x, y, batches[step], epoch_key, step, static=static
                )
        else:
            variables, opt_state, _ = _run_epoch(
                variables, opt_state, x, y, shuffle_key, dropout_key, epoch, static=static
            )
    return jax.device_get(variables)


def teacher_logits(config: TeacherConfig, variables: PyTree, x: Any) -> np.ndarray:
    """The teacher's logits in eval mode (dropout off), computed in fixed-size chunks.

    Args:
        config: the teacher's :class:`TeacherConfig` (its architecture). A CNN's
            ``image_shape=None`` is read as a square single-channel image here.
        variables: the Flax variables from :func:`fit_teacher`.
        x: ``[N, D]`` features.

    Returns:
        ``[N, C]`` float32 logits.

    Example:
        >>> import numpy as np
        >>> from amal_jax.distill.classification import load_digits
        >>> data = load_digits()
        >>> config = TeacherConfig(hidden=(8,), epochs=1)
        >>> variables = fit_teacher(data, config)
        >>> teacher_logits(config, variables, data.x_test).shape
        (359, 10)
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"teacher_logits needs features [N, D]; got shape {x.shape}.")
    num_classes = int(variables["params"]["logits"]["bias"].shape[0])
    arch = _arch(_resolve(config, x.shape[1]), num_classes)
    chunks = []
    for start in range(0, x.shape[0], _EVAL_CHUNK):
        chunk = x[start : start + _EVAL_CHUNK]
        padded = np.zeros((_EVAL_CHUNK, x.shape[1]), np.float32)
        padded[: chunk.shape[0]] = chunk
        out = _eval_forward(variables, padded, arch=arch)
        chunks.append(np.asarray(out)[: chunk.shape[0]])
    if not chunks:
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(chunks).astype(np.float32)


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Teacher probabilities ``softmax(logits / T)`` row by row, in float32 (NumPy).

    Args:
        logits: ``[N, C]`` logits, e.g. :attr:`TeacherLogits.train`.
        temperature: ``T > 0``; above 1 softens the distribution (distillation targets).

    Returns:
        ``[N, C]`` float32, each row sums to 1.

    Example:
        >>> import numpy as np
        >>> softmax(np.log(np.array([[1.0, 3.0]], np.float32))).round(2)
        array([[0.25, 0.75]], dtype=float32)
    """
    z = np.asarray(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def train_teacher(
    data: ClassificationData,
    config: TeacherConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> TeacherLogits:
    """Trains a teacher (or reads its cached logits) and returns its logits on every split.

    The cache file is ``<cache_dir>/teacher-<key>.npz`` with ``key =``
    :func:`teacher_cache_key`; it is written atomically (a temporary file in the same
    directory, then a rename), so concurrent or interrupted runs never leave a half file.
    An unreadable or mismatching cache file is treated as a miss (with a warning) and
    overwritten.

    Args:
        data: the data; the teacher learns ``y_train`` (noisy if noise was applied).
        config: the teacher; default ``TeacherConfig()`` (784-512-512-C style, 5 epochs).
        cache_dir: where cache files live; default :func:`default_cache_dir`.
        use_cache: False neither reads nor writes the cache.

    Returns:
        A :class:`TeacherLogits`.

    Example:
        >>> import tempfile
        >>> from amal_jax.distill.classification import load_digits
        >>> data, cache = load_digits(), tempfile.mkdtemp()
        >>> config = TeacherConfig(hidden=(16,), epochs=2)
        >>> first = train_teacher(data, config, cache_dir=cache)
        >>> second = train_teacher(data, config, cache_dir=cache)
        >>> first.from_cache, second.from_cache, first.test.shape
        (False, True, (359, 10))
    """
    config = TeacherConfig() if config is None else config
    key = teacher_cache_key(data, config)
    path = None
    if use_cache:
        directory = pathlib.Path(default_cache_dir() if cache_dir is None else cache_dir)
        path = directory / f"teacher-{key}.npz"
        cached = _read_cache(path, key, data, config)
        if cached is not None:
            return cached
    start = time.perf_counter()
    variables = fit_teacher(data, config)
    logits = {s: teacher_logits(config, variables, getattr(data, f"x_{s}")) for s in _SPLITS}
    seconds = time.perf_counter() - start
    result = TeacherLogits(
        train=_read_only(logits["train"]),
        valid=_read_only(logits["valid"]),
        test=_read_only(logits["test"]),
        test_accuracy=_accuracy(logits["test"], data.y_test),
        valid_accuracy=_accuracy(logits["valid"], data.y_valid),
        train_seconds=seconds,
        from_cache=False,
        cache_key=key,
        cache_path=path,
        config=config,
    )
    if path is not None:
        _write_cache(path, result)
    return result


def train_teachers(
    data: ClassificationData,
    configs: Sequence[TeacherConfig],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[TeacherLogits, ...]:
    """:func:`train_teacher` for each config (e.g. several seeds or widths), in order.

    Example:
        >>> import tempfile
        >>> from amal_jax.distill.classification import load_digits
        >>> configs = [TeacherConfig(hidden=(8,), epochs=1, seed=s) for s in range(2)]
        >>> teachers = train_teachers(load_digits(), configs, cache_dir=tempfile.mkdtemp())
        >>> [t.config.seed for t in teachers]
        [0, 1]
    """
    configs = list(configs)
    if not configs:
        raise ValueError("train_teachers needs at least one TeacherConfig.")
    return tuple(
        train_teacher(data, config, cache_dir=cache_dir, use_cache=use_cache) for config in configs
    )


# ----------------------------------------------------------------------------- helpers

_SPLITS = ("train", "valid", "test")
# The cache file's entries and the key's labels keep the names of format 2 ("val"), so files
# written before the split was called "valid" are still read.
_FILE_NAMES = {"valid": "val"}
_HASHED_NAMES = {"x_valid": "x_val", "y_valid": "y_val"}


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def _check_inputs(data: Any, config: Any) -> None:
    if not isinstance(data, ClassificationData):
        raise ValueError(f"teachers need a ClassificationData; got {type(data).__name__}.")
    if not isinstance(config, TeacherConfig):
        raise ValueError(f"config must be a TeacherConfig; got {type(config).__name__}.")
    _resolve(config, data.num_features, data)  # a CNN's image shape must fit the features


def _check_image_shape(shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"image_shape must be (H, W, C); got {shape!r}.") from None
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C); got {shape!r}.")
    for size in shape:
        _check_int("each image_shape entry", size, 1)
    return tuple(int(size) for size in shape)


def _resolve(
    config: TeacherConfig, num_features: int, data: ClassificationData | None = None
) -> TeacherConfig:
    """``config`` with a CNN's image shape filled in and checked against ``num_features``."""
    if config.kind != "cnn":
        return config
    shape = config.image_shape
    if shape is None and data is not None and data.image_shape is not None:
        shape = tuple(data.image_shape)
    if shape is None:
        side = math.isqrt(num_features)
        if side * side != num_features:
            raise ValueError(
                f"a CNN teacher needs an image shape: {num_features} features are not a square "
                "number and neither the config nor the data gives image_shape."
            )
        shape = (side, side, 1)
    if math.prod(shape) != num_features:
        raise ValueError(
            f"image_shape {shape} holds {math.prod(shape)} values but the data has "
            f"{num_features} features."
        )
    return dataclasses.replace(config, image_shape=shape)


class _Arch(NamedTuple):
    """The hashable architecture: one compilation per distinct value."""

    kind: str
    hidden: tuple[int, ...]
    conv: tuple[int, ...]
    image_shape: tuple[int, int, int] | None
    dropout: float
    num_classes: int

    def model(self) -> nn.Module:
        if self.kind == "cnn":
            return TeacherCNN(
                num_classes=self.num_classes,
                image_shape=self.image_shape,
                conv=self.conv,
                hidden=self.hidden,
                dropout=self.dropout,
            )
        return MLP(
            num_classes=self.num_classes,
            hidden=self.hidden,
            dropout=self.dropout,
            names=TEACHER_NAMES,
        )


def _arch(config: TeacherConfig, num_classes: int) -> _Arch:
    return _Arch(
        config.kind, config.hidden, config.conv, config.image_shape, config.dropout, num_classes
    )


class _Static(NamedTuple):
    """The hashable, compile-time part of training: one compilation per distinct value."""

    arch: _Arch
    learning_rate: float
    weight_decay: float
    batch_size: int

    def model(self) -> nn.Module:
        return self.arch.model()

    def optimizer(self) -> optax.GradientTransformation:
        if self.weight_decay > 0:
            return optax.adamw(self.learning_rate, weight_decay=self.weight_decay)
        return optax.adam(self.learning_rate)


# Module level (not a closure inside fit_teacher) so teachers that differ only in seed,
# epochs or data values reuse one compilation.
@functools.partial(jax.jit, static_argnames=("n", "static"))
def _epoch_batches(shuffle_key, dropout_key, epoch, n, static):
    """``[N // batch_size, batch_size]`` row indices of one reshuffled pass, and its key."""
    num_batches = n // static.batch_size
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
    batches = order[: num_batches * static.batch_size].reshape(num_batches, static.batch_size)
    return batches, jax.random.fold_in(dropout_key, epoch)


def _step(variables, opt_state, x, y, rows, epoch_key, step, static):
    """One optimizer step on the rows ``rows``; returns ``(variables, opt_state, loss)``."""
    model, tx = static.model(), static.optimizer()

    def loss_fn(variables):
        logits = model.apply(
            variables, x[rows], train=True, rngs={"dropout": jax.random.fold_in(epoch_key, step)}
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state, loss


_jit_step = jax.jit(_step, static_argnames=("static",), donate_argnums=(0, 1))


@functools.partial(jax.jit, static_argnames=("static",))
def _run_epoch(variables, opt_state, x, y, shuffle_key, dropout_key, epoch, *, static):
    """One reshuffled pass: a ``lax.scan`` over ``N // batch_size`` full batches."""
    batches, epoch_key = _epoch_batches(shuffle_key, dropout_key, epoch, x.shape[0], static)

    def body(carry, step_and_rows):
        step, rows = step_and_rows
        variables, opt_state, loss = _step(*carry, x, y, rows, epoch_key, step, static)
        return (variables, opt_state), loss

    (variables, opt_state), losses = jax.lax.scan(
        body, (variables, opt_state), (jnp.arange(batches.shape[0]), batches)
    )
    return variables, opt_state, losses.mean()


@functools.partial(jax.jit, static_argnames=("arch",))
def _eval_forward(variables, x, *, arch):
    return arch.model().apply(variables, x, train=False)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    if labels.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _read_cache(
    path: pathlib.Path, key: str, data: ClassificationData, config: TeacherConfig
) -> TeacherLogits | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {name: f[name] for name in f.files}
        if str(stored["key"]) != key or int(stored["format"]) != CACHE_FORMAT:
            raise ValueError("its key or format does not match")
        logits = {}
        for split in _SPLITS:
            array = stored[_FILE_NAMES.get(split, split)].astype(np.float32)
            expected = (getattr(data, f"y_{split}").shape[0], data.num_classes)
            if array.shape != expected:
                raise ValueError(f"its {split} logits are {array.shape}, expected {expected}")
            logits[split] = _read_only(array)
        return TeacherLogits(
            **logits,
            test_accuracy=float(stored["test_accuracy"]),
            valid_accuracy=float(stored["val_accuracy"]),
            train_seconds=float(stored["train_seconds"]),
            from_cache=True,
            cache_key=key,
            cache_path=path,
            config=config,
        )
    except (OSError, ValueError, KeyError, EOFError) as err:
        warnings.warn(
            f"ignoring unusable teacher cache file {path} ({err}); retraining.", stacklevel=3
        )
        return None


def _write_cache(path: pathlib.Path, result: TeacherLogits) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".teacher-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train=result.train,
                val=result.valid,
                test=result.test,
                test_accuracy=result.test_accuracy,
                val_accuracy=result.valid_accuracy,
                train_seconds=result.train_seconds,
                key=result.cache_key,
                format=CACHE_FORMAT,
                config=json.dumps(dataclasses.asdict(result.config), sort_keys=True),
            )
            f.flush()
            os.fsync(f.fileno())
        # A rename within one directory is atomic: readers see the old file or the whole new one.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
