"""Classification data sets for the distillation benchmarks, and symmetric label noise.

Every loader returns one :class:`ClassificationData`: flattened ``float32`` features, ``int32``
labels, and train / validation / test splits. The validation split is a stratified, seeded
``valid_fraction`` of the training pool and always keeps its **clean** labels (AMAL's meta
objective needs trustworthy labels); label noise only ever touches ``y_train``::

    data = load_classification("digits", seed=0)                 # sklearn's 8x8 digits
    data = load_classification("fashion_mnist", max_train=10000)  # Debian dataset-fashion-mnist
    data = load_classification("synthetic", seed=3)               # the authors' 20-class blobs
    data = load_classification("my_data.npz")                     # x / y (+ x_test / y_test)
    noisy = symmetric_noise(data, 0.4, seed=0)

Random streams are derived from ``seed`` with a separate tag per purpose (test split,
validation split, subsampling, noise), so changing one never shifts another.
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import math
import os
import pathlib
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "ClassificationData",
    "load_classification",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_synthetic",
    "read_idx",
    "symmetric_label_noise",
    "symmetric_noise",
]

#: Names :func:`load_classification` accepts besides a path to a ``.npz`` file.
DATASETS = ("digits", "fashion_mnist", "synthetic")

#: Where the Debian package ``dataset-fashion-mnist`` puts its (gzipped) IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The digits test split is fixed (independent of ``seed``) so runs with different seeds are
# scored on the same test images.
_DIGITS_SPLIT_SEED = 0

# Tags mixed into ``seed``: one independent random stream per purpose.
_TAG_TEST, _TAG_VAL, _TAG_SUBSAMPLE, _TAG_NOISE = 1, 2, 3, 4

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationData:
    """Train / validation / test splits of one classification problem.

    Arrays are stored as read-only views (the caller's arrays stay writable) so a data set
    cannot change under a teacher cache keyed by its contents.

    Fields:
        name: a short name for reports (``"digits"``, ``"fashion_mnist"``, a file stem).
        x_train: ``[N, D]`` float32 features, finite (NaN or inf is a ``ValueError``).
        y_train: ``[N]`` int32 training labels, noisy after :func:`symmetric_noise`.
        x_valid: ``[V, D]`` float32.
        y_valid: ``[V]`` int32, always clean.
        x_test: ``[T, D]`` float32.
        y_test: ``[T]`` int32, always clean.
        num_classes: ``C``; every label lies in ``[0, C)``.
        y_train_clean: ``[N]`` int32 clean training labels; defaults to ``y_train``.
        noisy_mask: ``[N]`` bool, True where ``y_train != y_train_clean``; defaults to that.
        noise_rate: the ``rate`` passed to :func:`symmetric_noise` (0 for clean data).
        image_shape: ``(H, W, C)`` when each row is a flattened channels-last image
            (``H * W * C == D``), e.g. ``(8, 8, 1)`` for digits; None for other features.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    y_train_clean: np.ndarray | None = None
    noisy_mask: np.ndarray | None = None
    noise_rate: float = 0.0
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(
            self.num_classes, (int, np.integer)
        ):
            raise ValueError(f"num_classes must be an integer; got {self.num_classes!r}.")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1; got {self.num_classes}.")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        clean = self.y_train if self.y_train_clean is None else self.y_train_clean
        object.__setattr__(self, "y_train_clean", clean)
        features = None
        for split in ("train", "valid", "test"):
            x = np.asarray(getattr(self, f"x_{split}"), np.float32)
            if x.ndim != 2:
                raise ValueError(f"x_{split} must be [N, D]; got shape {x.shape}.")
            _check_finite(x, f"x_{split}", "features must be finite")
            if features is None:
                features = x.shape[1]
            elif x.shape[1] != features:
                raise ValueError(f"x_{split} has {x.shape[1]} features but x_train has {features}.")
            object.__setattr__(self, f"x_{split}", _read_only(x))
            for label_field in [f"y_{split}"] + (["y_train_clean"] if split == "train" else []):
                y = _check_labels(getattr(self, label_field), self.num_classes, label_field)
                if y.shape != x.shape[:1]:
                    raise ValueError(
                        f"{label_field} has shape {y.shape} but x_{split} has {x.shape[0]} rows."
                    )
                object.__setattr__(self, label_field, _read_only(y))
        mask = self.y_train != self.y_train_clean
        if self.noisy_mask is not None and not np.array_equal(
            np.asarray(self.noisy_mask, bool), mask
        ):
            raise ValueError(
                "noisy_mask must be exactly y_train != y_train_clean; pass noisy_mask=None to "
                "have it computed (e.g. in dataclasses.replace after changing y_train)."
            )
        object.__setattr__(self, "noisy_mask", _read_only(mask))
        _check_rate(self.noise_rate)
        object.__setattr__(self, "noise_rate", float(self.noise_rate))
        if self.image_shape is not None:
            object.__setattr__(
                self, "image_shape", _check_image_shape(self.image_shape, features, "image_shape")
            )

    @property
    def num_features(self) -> int:
        """``D``, the number of (flattened) features."""
        return self.x_train.shape[1]

    @property
    def noise_fraction(self) -> float:
        """The realised fraction of training labels that differ from the clean ones."""
        return float(self.noisy_mask.mean()) if self.noisy_mask.size else 0.0

    def __repr__(self) -> str:
        return (
            f"ClassificationData(name={self.name!r}, train={self.x_train.shape}, "
            f"valid={self.x_valid.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes}, noise_rate={self.noise_rate}, "
            f"noise_fraction={self.noise_fraction:.4f})"
        )


# ----------------------------------------------------------------------------- label noise


def symmetric_label_noise(
    labels: Any,
    num_classes: int,
    rate: float,
    *,
    seed: int,
    allow_same: bool = True,
) -> np.ndarray:
    """Symmetric label noise on a label array.

    Exactly ``round(rate * N)`` rows, chosen uniformly without replacement, get a new label:

    - ``allow_same=True`` (default, the AMAL papers' "symmetric noise"): the new label is
      drawn uniformly from **all** ``C`` classes, so it may equal the true one. The fraction
      of labels that actually change is ``rate * (C - 1) / C`` in expectation (binomial
      around it).
    - ``allow_same=False``: the new label is drawn uniformly from the other ``C - 1``
      classes, so exactly ``round(rate * N)`` labels change.

    Args:
        labels: ``[N]`` integer labels in ``[0, C)``.
        num_classes: ``C``.
        rate: the fraction of rows that are resampled, in ``[0, 1]``.
        seed: the seed of the noise; the same seed gives the same noisy labels.
        allow_same: whether the resampled label may equal the true one (see above).

    Returns:
        ``[N]`` int32 noisy labels (a new array; the input is not modified).

    Example:
        >>> import numpy as np
        >>> clean = np.zeros(1000, np.int32)
        >>> noisy = symmetric_label_noise(clean, 10, 0.4, seed=0, allow_same=False)
        >>> int((noisy != clean).sum())
        400
    """
    _check_rate(rate)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer; got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}.")
    labels = _check_labels(labels, int(num_classes), "labels")
    if not allow_same and num_classes < 2 and rate > 0:
        raise ValueError("allow_same=False needs at least 2 classes to draw a different label.")
    n = labels.shape[0]
    count = math.floor(rate * n + 0.5)
    rng = np.random.default_rng([_check_seed(seed), _TAG_NOISE])
    rows = rng.choice(n, size=count, replace=False)
    noisy = labels.copy()
    if allow_same:
        noisy[rows] = rng.integers(0, num_classes, size=count)
    else:
        noisy[rows] = (labels[rows] + rng.integers(1, num_classes, size=count)) % num_classes
    return noisy


def symmetric_noise(
    data: ClassificationData, rate: float, *, seed: int, allow_same: bool = True
) -> ClassificationData:
    """The data with symmetric noise on its **training** labels (see :func:`symmetric_label_noise`).

    The noise is applied to ``data.y_train_clean``, so noising already-noisy data replaces the
    old noise rather than compounding it. Validation and test labels are never touched.

    Args:
        data: a :class:`ClassificationData`.
        rate: the fraction of training rows whose label is resampled, in ``[0, 1]``.
        seed: the seed of the noise.
        allow_same: whether a resampled label may equal the true one (default True: drawn
            uniformly from all classes, as in the AMAL papers).

    Returns:
        A new :class:`ClassificationData` with noisy ``y_train``, the clean labels in
        ``y_train_clean``, ``noisy_mask`` marking the rows whose label changed, and
        ``noise_rate=rate``.

    Example:
        >>> data = load_digits(seed=0)
        >>> noisy = symmetric_noise(data, 0.4, seed=0)
        >>> bool((noisy.y_train[noisy.noisy_mask] != noisy.y_train_clean[noisy.noisy_mask]).all())
        True
        >>> round(noisy.noise_fraction, 1)  # about 0.4 * 9 / 10
        0.4
    """
    if not isinstance(data, ClassificationData):
        raise ValueError(f"symmetric_noise needs a ClassificationData; got {type(data).__name__}.")
    noisy = symmetric_label_noise(
        data.y_train_clean, data.num_classes, rate, seed=seed, allow_same=allow_same
    )
    return dataclasses.replace(data, y_train=noisy, noisy_mask=None, noise_rate=float(rate))


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

    The format: two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, then one
    big-endian uint32 per dimension and the data, big-endian, in C order. Compression is
    detected from the content (gzip magic), not from the file name.

    Args:
        path: the file.

    Returns:
        The array, in native byte order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a valid IDX file (bad magic number, unknown type code,
            truncated or over-long data, broken gzip stream).

    Example:
        >>> import os, struct, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx2-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + bytes(range(6)))
        >>> read_idx(path).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(
                f"{path} looks gzip-compressed but does not decompress: {err}"
            ) from None
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file.")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: its magic number {raw[:4].hex()} does not start with "
            "two zero bytes."
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path} has IDX type code 0x{code:02X}; known codes are {known}.")
    if ndim == 0:
        raise ValueError(f"{path} declares an IDX array with 0 dimensions.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its IDX header ({ndim} dimensions).")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path} declares shape {shape} of {dtype.name} ({expected} bytes of data) but holds "
            f"{len(raw) - header} bytes after its header."
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- loaders


def load_digits(
    *, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.2
) -> ClassificationData:
    """scikit-learn's bundled 8x8 digits: 1797 images, 64 features scaled to ``[0, 1]``, 10 classes.

    The test split is a fixed stratified ``test_fraction`` (the same for every ``seed``, so
    runs are scored on one test set); ``seed`` picks the stratified validation split.

    Args:
        seed: seed of the validation split.
        valid_fraction: fraction of the training pool held out (clean) for validation.
        test_fraction: fraction of all images held out for testing.

    Returns:
        A :class:`ClassificationData` named ``"digits"``.

    Example:
        >>> data = load_digits()
        >>> data.x_train.shape, data.x_valid.shape, data.x_test.shape, data.num_classes
        ((1294, 64), (144, 64), (359, 64), 10)
    """
    datasets = _sklearn_datasets()
    _check_fraction("test_fraction", test_fraction)
    bunch = datasets.load_digits()
    x = bunch.data.astype(np.float32) / 16.0  # pixel intensities are 0..16
    y = bunch.target.astype(np.int32)
    rng = np.random.default_rng([_DIGITS_SPLIT_SEED, _TAG_TEST])
    pool, test = _stratified_split(y, test_fraction, rng, "test_fraction")
    return _finish(
        "digits",
        x[pool],
        y[pool],
        x[test],
        y[test],
        10,
        seed,
        valid_fraction,
        image_shape=(8, 8, 1),
    )


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """Fashion-MNIST from its IDX files: 784 features scaled to ``[0, 1]``, 10 classes.

    The files come from the Debian package ``dataset-fashion-mnist`` (``apt-get install
    dataset-fashion-mnist``), which puts ``train-images-idx3-ubyte.gz`` etc. under
    :data:`FASHION_MNIST_DIR`; plain (uncompressed) files with the same stems work too.

    Args:
        root: the directory with the four IDX files; default :data:`FASHION_MNIST_DIR`.
        seed: seed of the subsampling and the validation split.
        valid_fraction: fraction of the (subsampled) 60000-image training pool held out for
            validation, with clean labels.
        max_train: optional cap on the training pool **before** the validation split
            (a stratified random subset), for speed.
        max_test: optional cap on the 10000 test images (a stratified random subset).

    Returns:
        A :class:`ClassificationData` named ``"fashion_mnist"``.

    Raises:
        FileNotFoundError: if an IDX file is missing; the message names the Debian package.

    Example:
        >>> data = load_fashion_mnist(max_train=1000)  # doctest: +SKIP
        >>> data.x_train.shape, data.x_valid.shape  # doctest: +SKIP
        ((900, 784), (100, 784))
    """
    root = pathlib.Path(FASHION_MNIST_DIR if root is None else root)
    arrays = {}
    for key, stem in _FASHION_FILES.items():
        candidates = [root / (stem + ".gz"), root / stem]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the Debian package "
                "dataset-fashion-mnist (`sudo apt-get install dataset-fashion-mnist`, files in "
                f"{FASHION_MNIST_DIR}) or pass root= the directory holding the IDX files."
            )
        arrays[key] = read_idx(found)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"Fashion-MNIST {split} files hold images {x.shape} and labels {y.shape}; "
                "expected [N, 28, 28] and [N]."
            )
    x_pool = arrays["x_train"].reshape(-1, 784)
    y_pool = _check_labels(arrays["y_train"], 10, "Fashion-MNIST training labels")
    x_test = arrays["x_test"].reshape(-1, 784)
    y_test = _check_labels(arrays["y_test"], 10, "Fashion-MNIST test labels")
    rng = np.random.default_rng([_check_seed(seed), _TAG_SUBSAMPLE])
    x_pool, y_pool = _subsample(x_pool, y_pool, max_train, rng, "max_train")
    x_test, y_test = _subsample(x_test, y_test, max_test, rng, "max_test")
    # Scale after subsampling so only the kept rows are converted to float32.
    x_pool = x_pool.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    return _finish(
        "fashion_mnist",
        x_pool,
        y_pool,
        x_test,
        y_test,
        10,
        seed,
        valid_fraction,
        image_shape=(28, 28, 1),
    )


def load_synthetic(
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    flip_y: float = 0.0,
    n_samples: int = 10000,
) -> ClassificationData:
    """The authors' synthetic problem: 20 classes of one Gaussian cluster each in 14 dimensions.

    ``sklearn.datasets.make_classification(n_samples, n_features=14, n_informative=14,
    n_redundant=0, n_repeated=0, n_classes=20, n_clusters_per_class=1, flip_y=flip_y,
    random_state=seed)``, a stratified seeded test split, then features standardised with the
    training split's mean and standard deviation.

    Args:
        seed: generates the problem and both splits.
        valid_fraction: fraction of the training pool held out for validation.
        test_fraction: fraction of the samples held out for testing.
        flip_y: sklearn's own label noise, on **all** splits (default 0: add training-label
            noise with :func:`symmetric_noise` instead, which keeps validation / test clean).
        n_samples: total number of samples.

    Returns:
        A :class:`ClassificationData` named ``"synthetic"``.

    Example:
        >>> data = load_synthetic(n_samples=1000)
        >>> data.x_train.shape, data.x_test.shape, data.num_classes
        ((720, 14), (200, 14), 20)
    """
    datasets = _sklearn_datasets()
    seed = _check_seed(seed)
    _check_fraction("test_fraction", test_fraction)
    if not 0.0 <= flip_y <= 1.0:
        raise ValueError(f"flip_y must lie in [0, 1]; got {flip_y!r}.")
    x, y = datasets.make_classification(
        n_samples=n_samples,
        n_features=14,
        n_informative=14,
        n_redundant=0,
        n_repeated=0,
        n_classes=20,
        n_clusters_per_class=1,
        flip_y=flip_y,
        random_state=seed,
    )
    x, y = x.astype(np.float32), y.astype(np.int32)
    pool, test = _stratified_split(y, test_fraction, np.random.default_rng([seed, _TAG_TEST]))
    return _finish(
        "synthetic", x[pool], y[pool], x[test], y[test], 20, seed, valid_fraction, standardize=True
    )


def load_npz(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    standardize: bool = True,
) -> ClassificationData:
    """A user data set from a ``.npz`` file: ``x`` / ``y``, optionally ``x_test`` / ``y_test``.

    Images: an ``image_shape`` entry (``[H, W]`` or ``[H, W, C]`` integers whose product is
    the number of features; rows are read channels last) sets the data's ``image_shape``;
    without one it is None, whatever the shape ``x`` is stored in.

    Features are flattened to ``[N, D]`` and must be real and finite: a NaN or inf (or a
    value beyond the float32 range) in ``x`` or ``x_test`` is a ``ValueError`` naming the
    array and the first bad row, since standardisation would spread it over the whole
    feature column of every split. Labels must be integers (integer dtype, or floats with
    integral values) in ``[0, C)``. Without ``x_test`` / ``y_test`` a stratified seeded
    ``test_fraction`` of ``x`` / ``y`` becomes the test set.

    Args:
        path: the ``.npz`` file.
        seed: seed of the splits.
        valid_fraction: fraction of the training pool held out for validation.
        test_fraction: used only when the file has no test arrays.
        num_classes: ``C``; default the file's ``num_classes`` entry (a positive integer
            scalar) if any, else the largest label + 1.
        standardize: standardise features with the training split's mean and standard
            deviation (constant features are only centred); False keeps them as stored.

    Returns:
        A :class:`ClassificationData` named after the file's stem.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not a plain ``.npz``, lacks ``x`` / ``y``, or holds
            mismatched shapes, non-numeric, complex or non-finite features, non-integer or
            out-of-range labels, or a bad ``num_classes`` entry; the message names the array.

    Example:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> np.savez(path, x=np.random.rand(100, 2, 3), y=np.arange(100) % 4)
        >>> data = load_npz(path)
        >>> data.x_train.shape, data.x_test.shape, data.num_classes, data.image_shape
        ((72, 6), (20, 6), 4, None)
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .npz data file at {path}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz file of plain arrays: {err}") from None
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks the array(s) {missing}; it needs 'x' [N, ...] and 'y' [N] (optionally "
            f"'x_test' and 'y_test'). It holds {sorted(arrays)}."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path} must hold both 'x_test' and 'y_test' or neither.")
    if num_classes is None and "num_classes" in arrays:
        num_classes = _stored_num_classes(arrays["num_classes"], path)
    splits = {"": ("x", "y")} | ({"_test": ("x_test", "y_test")} if "x_test" in arrays else {})
    xs, ys = {}, {}
    for suffix, (xk, yk) in splits.items():
        x, y = arrays[xk], arrays[yk]
        if y.ndim != 1:
            raise ValueError(f"{path}: '{yk}' must be a 1-D label array; got shape {y.shape}.")
        if x.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: '{xk}' has shape {x.shape} but '{yk}' has {y.shape[0]} labels; the "
                "first dimensions must match."
            )
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{path}: '{xk}' must be numeric; got dtype {x.dtype}.")
        if np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{path}: '{xk}' must be real-valued; got dtype {x.dtype}.")
        flat = x.reshape(x.shape[0], -1)
        # One NaN or inf would make its feature column NaN in every split (standardisation).
        _check_finite(flat, f"{path}: '{xk}'", "features must be finite; drop or impute it")
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            xs[suffix] = flat.astype(np.float32)
        _check_finite(
            xs[suffix], f"{path}: '{xk}' (as float32)", "the value overflows float32; rescale"
        )
        ys[suffix] = _integer_labels(y, f"{path}: '{yk}'")
    if "_test" in xs and xs["_test"].shape[1] != xs[""].shape[1]:
        raise ValueError(
            f"{path}: 'x' has {xs[''].shape[1]} features per row but 'x_test' has "
            f"{xs['_test'].shape[1]}."
        )
    if num_classes is None:
        num_classes = int(max(int(y.max(initial=-1)) for y in ys.values())) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"{path} yields num_classes={num_classes}; it must be at least 1.")
    for suffix, y in ys.items():
        _check_labels(y, num_classes, f"{path}: 'y{suffix}'")
    image_shape = None
    if "image_shape" in arrays:
        entry = arrays["image_shape"]
        if entry.ndim != 1 or not np.issubdtype(entry.dtype, np.integer) or entry.dtype == bool:
            raise ValueError(
                f"{path}: 'image_shape' must be a 1-D integer array [H, W] or [H, W, C]; got "
                f"{entry.tolist()!r} (dtype {entry.dtype})."
            )
        image_shape = _check_image_shape(
            tuple(int(v) for v in entry), xs[""].shape[1], f"{path}: 'image_shape'"
        )
    seed = _check_seed(seed)
    x, y = xs[""], ys[""]
    if "_test" in xs:
        x_pool, y_pool, x_test, y_test = x, y, xs["_test"], ys["_test"]
    else:
        _check_fraction("test_fraction", test_fraction)
        rng = np.random.default_rng([seed, _TAG_TEST])
        pool, test = _stratified_split(y, test_fraction, rng, "test_fraction")
        x_pool, y_pool, x_test, y_test = x[pool], y[pool], x[test], y[test]
    return _finish(
        path.stem,
        x_pool,
        y_pool,
        x_test,
        y_test,
        num_classes,
        seed,
        valid_fraction,
        standardize,
        image_shape=image_shape,
    )


_LOADERS = {"digits": load_digits, "fashion_mnist": load_fashion_mnist, "synthetic": load_synthetic}


def load_classification(
    name_or_path: str | os.PathLike,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    noise_rate: float = 0.0,
    noise_seed: int | None = None,
    **options: Any,
) -> ClassificationData:
    """Loads a classification data set by name or ``.npz`` path, optionally with label noise.

    Args:
        name_or_path: ``"digits"`` (:func:`load_digits`), ``"fashion_mnist"``
            (:func:`load_fashion_mnist`), ``"synthetic"`` (:func:`load_synthetic`), or a
            path to a ``.npz`` file (:func:`load_npz`).
        seed: seed of the splits (and of the noise unless ``noise_seed`` is given).
        valid_fraction: fraction of the training pool held out, with clean labels, for
            validation.
        noise_rate: if positive, :func:`symmetric_noise` at this rate on the training labels.
        noise_seed: seed of the noise; default ``seed``.
        **options: passed to the loader (e.g. ``max_train=``, ``flip_y=``, ``root=``).

    Returns:
        A :class:`ClassificationData`.

    Example:
        >>> data = load_classification("digits", noise_rate=0.2)
        >>> data.name, data.noise_rate, data.x_valid.shape
        ('digits', 0.2, (144, 64))
    """
    key = os.fspath(name_or_path)
    if key in _LOADERS:
        loader = _LOADERS[key]
        args: tuple[Any, ...] = ()
    elif key.endswith(".npz") or os.path.isfile(key):
        loader, args = load_npz, (key,)
    else:
        raise ValueError(
            f"unknown data set {key!r}: use one of {DATASETS} or the path of an existing .npz "
            "file with arrays 'x' and 'y'."
        )
    allowed = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind == p.KEYWORD_ONLY or (p.name == "root" and loader is load_fashion_mnist)
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{loader.__name__} does not take option(s) {unknown}; it takes {sorted(allowed)}."
        )
    data = loader(*args, seed=seed, valid_fraction=valid_fraction, **options)
    if noise_rate:
        data = symmetric_noise(data, noise_rate, seed=seed if noise_seed is None else noise_seed)
    return data


# ----------------------------------------------------------------------------- helpers


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise ImportError(
            "this data set needs scikit-learn; install it with `pip install amal_jax[bench]`."
        ) from None
    return datasets


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


def _check_rate(rate: Any) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise ValueError(f"the noise rate must be a number in [0, 1]; got {rate!r}.")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the noise rate must lie in [0, 1]; got {rate!r}.")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    return int(seed)


def _check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; got {value!r}.")
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        allowed = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must lie in {allowed}; got {value!r}.")


def _integer_labels(y: np.ndarray, what: str) -> np.ndarray:
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{what} must hold integer class labels; got dtype {y.dtype}.")
    if np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold integer class labels; got dtype {y.dtype}.")
    if not np.issubdtype(y.dtype, np.integer):
        integral = np.isfinite(y) & (y == np.round(y)) if y.size else np.ones(0, bool)
        if not integral.all():
            bad = y[~integral][:3].tolist()
            row = int(np.flatnonzero(~integral)[0])
            raise ValueError(
                f"{what} must hold integer class labels; found non-integers {bad} (the first "
                f"at row {row})."
            )
        if y.size and np.abs(y).max() >= 2**62:
            raise ValueError(f"{what} holds labels too large to be class ids ({y.max()}).")
    return y.astype(np.int64)


def _stored_num_classes(value: np.ndarray, path: pathlib.Path) -> int:
    """The file's ``num_classes`` entry as a positive int, or a ValueError saying what it is."""
    ok = value.ndim == 0 and (
        (np.issubdtype(value.dtype, np.integer) and value.dtype != bool)
        or (
            np.issubdtype(value.dtype, np.floating)
            and np.isfinite(value)
            and value == np.round(value)
        )
    )
    if not ok or value < 1:
        raise ValueError(
            f"{path}: 'num_classes' must be a positive integer scalar; got {value.tolist()!r} "
            f"(dtype {value.dtype}, shape {value.shape})."
        )
    return int(value)


def _check_image_shape(shape: Any, num_features: int, what: str) -> tuple[int, int, int]:
    """``(H, W, C)`` from ``(H, W)`` or ``(H, W, C)`` positive ints multiplying to ``D``."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"{what} must be (H, W) or (H, W, C); got {shape!r}.") from None
    ok = len(shape) in (2, 3) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in shape
    )
    if not ok:
        raise ValueError(f"{what} must be (H, W) or (H, W, C) positive integers; got {shape!r}.")
    shape = tuple(int(v) for v in shape) + ((1,) if len(shape) == 2 else ())
    if math.prod(shape) != num_features:
        raise ValueError(
            f"{what} {shape} holds {math.prod(shape)} values per row but there are "
            f"{num_features} features."
        )
    return shape


def _check_finite(x: np.ndarray, what: str, why: str) -> None:
    """A ValueError naming ``what`` and the first row of ``x`` ``[N, D]`` with a NaN or inf."""
    if not np.issubdtype(x.dtype, np.inexact):
        return  # integers and booleans are always finite
    finite = np.isfinite(x)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite.all(axis=1))[0])
    col = int(np.flatnonzero(~finite[row])[0])
    raise ValueError(
        f"{what} holds a non-finite value ({x[row, col]}) in row {row} (feature {col}); {why}."
    )


def _check_labels(y: Any, num_classes: int, what: str) -> np.ndarray:
    """``[N]`` labels in ``[0, C)`` as int32, or a ValueError naming ``what``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D label array; got shape {y.shape}.")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must have an integer dtype; got {y.dtype}.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        row = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(
            f"{what} must lie in [0, {num_classes}); found labels from {int(y.min())} to "
            f"{int(y.max())} (the first outside at row {row}: {int(y[row])})."
        )
    return y.astype(np.int32, copy=False)


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator, what: str = "fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held)``, each sorted; ``held`` is ``round(fraction * N)`` rows, stratified.

    Each class contributes ``fraction`` of its rows, rounded by the largest-remainder rule so
    the total is exact; which rows is random.
    """
    n = y.shape[0]
    total = math.floor(fraction * n + 0.5)
    if total >= n and n > 0 and fraction < 1.0:
        raise ValueError(f"{what}={fraction} of {n} examples leaves none on the other side.")
    classes, counts = np.unique(y, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    remainder = quota - take
    # Ties in the remainders are broken at random, not by class order.
    order = np.lexsort((rng.random(classes.size), -remainder))
    take[order[: total - int(take.sum())]] += 1
    held = []
    for cls, k in zip(classes, take, strict=True):
        rows = np.flatnonzero(y == cls)
        held.append(rng.choice(rows, size=int(k), replace=False))
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(n, bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx


def _subsample(
    x: np.ndarray, y: np.ndarray, cap: int | None, rng: np.random.Generator, what: str
) -> tuple[np.ndarray, np.ndarray]:
    if cap is None:
        return x, y
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
        raise ValueError(f"{what} must be a positive integer or None; got {cap!r}.")
    if cap >= y.shape[0]:
        return x, y
    _, rows = _stratified_split(y, cap / y.shape[0], rng, what)
    return x[rows], y[rows]


def _finish(
    name: str,
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    seed: int,
    valid_fraction: float,
    standardize: bool = False,
    *,
    image_shape: tuple[int, ...] | None = None,
) -> ClassificationData:
    """Holds out the clean validation split, optionally standardises, and builds the data."""
    _check_fraction("valid_fraction", valid_fraction, allow_zero=True)
    rng = np.random.default_rng([_check_seed(seed), _TAG_VAL])
    train, valid = _stratified_split(y_pool, valid_fraction, rng, "valid_fraction")
    x_train, x_valid = x_pool[train], x_pool[valid]
    if standardize:
        # Training statistics only: validation and test must not leak into the features.
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)

        def scale(x):
            return ((x - mean) / std).astype(np.float32)

        x_train, x_valid, x_test = scale(x_train), scale(x_valid), scale(x_test)
    return ClassificationData(
        name=name,
        x_train=x_train,
        y_train=y_pool[train],
        x_valid=x_valid,
        y_valid=y_pool[valid],
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        image_shape=image_shape,
    )
