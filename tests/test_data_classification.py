"""Data sets, the IDX reader and symmetric label noise (amal_jax.distill.classification)."""

from __future__ import annotations

import dataclasses
import gzip
import math
import pathlib
import struct

import numpy as np
import pytest

from amal_jax.distill import classification as cls
from amal_jax.distill.classification import (
    FASHION_MNIST_DIR,
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


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def assert_data_equal(a: ClassificationData, b: ClassificationData) -> None:
    for field in dataclasses.fields(ClassificationData):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y, field.name


# ----------------------------------------------------------------------------- label noise


@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("rate", [0.1, 0.4, 0.8])
def test_realised_noise_rate_draws_from_all_classes(rate, num_classes):
    labels = np.random.default_rng(0).integers(0, num_classes, 200_000)
    noisy = symmetric_label_noise(labels, num_classes, rate, seed=1)
    changed = np.mean(noisy != labels)
    # round(rate * N) rows are resampled; each keeps its label with probability 1 / C.
    expected = rate * (num_classes - 1) / num_classes
    std = math.sqrt(rate * 200_000 * (num_classes - 1) / num_classes**2) / 200_000
    assert abs(changed - expected) < max(6 * std, 1e-4), (changed, expected)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.4, 1.0])
def test_noise_without_same_class_changes_exactly_rate_n(rate):
    labels = np.random.default_rng(0).integers(0, 10, 10_001)
    noisy = symmetric_label_noise(labels, 10, rate, seed=3, allow_same=False)
    assert int(np.sum(noisy != labels)) == math.floor(rate * 10_001 + 0.5)


def test_noisy_labels_are_uniform_over_the_other_classes():
    labels = np.zeros(100_000, np.int64)
    noisy = symmetric_label_noise(labels, 5, 0.5, seed=0, allow_same=False)
    counts = np.bincount(noisy[noisy != 0], minlength=5)
    assert counts[0] == 0
    # 50000 draws over 4 classes: each count is 12500 +- ~97 (binomial std).
    np.testing.assert_allclose(counts[1:], 12_500, atol=600)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_resampled_labels_are_uniform_over_all_classes(num_classes):
    # All-zero labels: the round(rate * N) resampled rows are uniform over all C classes, so
    # class c > 0 gets k / C rows and class 0 keeps N - k + k / C.
    n, rate = 100_000, 0.6
    k = round(rate * n)
    noisy = symmetric_label_noise(np.zeros(n, np.int64), num_classes, rate, seed=2)
    counts = np.bincount(noisy, minlength=num_classes)
    expected = np.full(num_classes, k / num_classes)
    expected[0] += n - k
    std = math.sqrt(k * (1 / num_classes) * (1 - 1 / num_classes))
    np.testing.assert_allclose(counts, expected, atol=6 * std)


def test_noise_is_seeded_and_leaves_the_input_alone():
    labels = np.random.default_rng(0).integers(0, 10, 5000).astype(np.int32)
    before = labels.copy()
    a = symmetric_label_noise(labels, 10, 0.3, seed=7)
    b = symmetric_label_noise(labels, 10, 0.3, seed=7)
    c = symmetric_label_noise(labels, 10, 0.3, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    np.testing.assert_array_equal(labels, before)
    assert a.dtype == np.int32


def test_symmetric_noise_touches_only_training_labels(digits):
    noisy = symmetric_noise(digits, 0.4, seed=0)
    np.testing.assert_array_equal(noisy.y_train_clean, digits.y_train)
    np.testing.assert_array_equal(noisy.noisy_mask, noisy.y_train != digits.y_train)
    assert noisy.noisy_mask.sum() > 0.3 * digits.y_train.size
    for field in ("x_train", "x_valid", "y_valid", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(noisy, field), getattr(digits, field), err_msg=field)
    assert noisy.noise_rate == 0.4
    assert noisy.noise_fraction == pytest.approx(noisy.noisy_mask.mean())
    # The original data object is unchanged (frozen, read-only arrays).
    assert not digits.noisy_mask.any()


def test_symmetric_noise_is_seeded(digits):
    a = symmetric_noise(digits, 0.2, seed=0)
    b = symmetric_noise(digits, 0.2, seed=0)
    c = symmetric_noise(digits, 0.2, seed=1)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert np.any(a.y_train != c.y_train)


def test_zero_rate_changes_nothing(digits):
    same = symmetric_noise(digits, 0.0, seed=0)
    np.testing.assert_array_equal(same.y_train, digits.y_train)
    assert not same.noisy_mask.any()
    assert same.noise_fraction == 0.0


def test_renoising_replaces_rather_than_compounds(digits):
    noisy = symmetric_noise(digits, 0.5, seed=0)
    again = symmetric_noise(noisy, 0.5, seed=0)
    np.testing.assert_array_equal(again.y_train, noisy.y_train)
    clean = symmetric_noise(noisy, 0.0, seed=0)
    np.testing.assert_array_equal(clean.y_train, digits.y_train)


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan"), "0.2", True])
def test_invalid_noise_rates_raise(digits, rate):
    with pytest.raises(ValueError, match="rate"):
        symmetric_noise(digits, rate, seed=0)
    with pytest.raises(ValueError, match="rate"):
        symmetric_label_noise(np.zeros(10, int), 3, rate, seed=0)


def test_noise_rejects_bad_labels_and_seeds():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        symmetric_label_noise(np.array([0, 1, 3]), 3, 0.1, seed=0)
    with pytest.raises(ValueError, match="integer dtype"):
        symmetric_label_noise(np.array([0.0, 1.0]), 3, 0.1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        symmetric_label_noise(np.array([0, 1]), 3, 0.1, seed=-1)
    with pytest.raises(ValueError, match="2 classes"):
        symmetric_label_noise(np.array([0, 0]), 1, 0.5, seed=0, allow_same=False)


# ----------------------------------------------------------------------------- IDX files


def idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """Hand-built IDX bytes, independent of the reader."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_known_contents(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    floats = [1.5, -2.25, 3e10]
    files = {
        "images": (idx_bytes(0x08, (2, 3, 4), images.tobytes()), images),
        "ints": (idx_bytes(0x0C, (3,), struct.pack(">3i", 1, -2, 70000)), [1, -2, 70000]),
        "floats": (idx_bytes(0x0D, (3,), struct.pack(">3f", *floats)), floats),
        "shorts": (idx_bytes(0x0B, (2,), struct.pack(">2h", -300, 300)), [-300, 300]),
    }
    for name, (raw, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(raw) if compress else raw)
        got = read_idx(path)
        np.testing.assert_array_equal(got, np.asarray(expected, got.dtype), err_msg=name)
        assert got.dtype.isnative
    assert read_idx(tmp_path / "images").dtype == np.uint8
    assert read_idx(tmp_path / "ints").dtype == np.int32
    assert read_idx(tmp_path / "floats").dtype == np.float32


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x08\x03\x00\x01" + b"\x00" * 8, "magic number"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "type code 0x07"),
        (idx_bytes(0x08, (2, 2), bytes(3)), "4 bytes of data"),
        (idx_bytes(0x08, (2, 2), bytes(5)), "holds 5 bytes"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated"),
        (b"\x00\x00", "too short"),
        (b"\x1f\x8bnot really gzip", "gzip"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, raw, match):
    path = tmp_path / "bad"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def write_fake_fashion(root: pathlib.Path, n_train: int, n_test: int) -> None:
    """Tiny Fashion-MNIST-shaped IDX files: training images gzipped, test images plain."""
    rng = np.random.default_rng(0)
    for split, n, compress in (("train", n_train, True), ("t10k", n_test, False)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            raw = idx_bytes(0x08, array.shape, array.tobytes())
            name = f"{split}-{kind}-ubyte"
            if compress:
                (root / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)


def test_fashion_loader_reads_idx_files(tmp_path):
    write_fake_fashion(tmp_path, n_train=500, n_test=100)
    data = load_fashion_mnist(tmp_path, seed=0, valid_fraction=0.1)
    assert data.x_train.shape == (450, 784)
    assert data.x_valid.shape == (50, 784)
    assert data.x_test.shape == (100, 784)
    assert data.num_classes == 10
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.x_train.max() > 0.99  # scaled by 255, not by something larger
    np.testing.assert_array_equal(np.bincount(data.y_valid, minlength=10), 5)


def test_fashion_loader_subsamples(tmp_path):
    write_fake_fashion(tmp_path, n_train=500, n_test=100)
    data = load_fashion_mnist(tmp_path, max_train=200, max_test=50, seed=1)
    assert data.x_train.shape[0] + data.x_valid.shape[0] == 200
    assert data.x_test.shape[0] == 50
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), 5)
    again = load_fashion_mnist(tmp_path, max_train=200, max_test=50, seed=1)
    assert_data_equal(data, again)
    other = load_fashion_mnist(tmp_path, max_train=200, max_test=50, seed=2)
    assert not np.array_equal(data.x_train, other.x_train)
    with pytest.raises(ValueError, match="max_train"):
        load_fashion_mnist(tmp_path, max_train=0)


def test_fashion_loader_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_classification("fashion_mnist", root=tmp_path)


def test_real_fashion_mnist_if_installed():
    root = pathlib.Path(FASHION_MNIST_DIR)
    if (
        not (root / "train-images-idx3-ubyte.gz").is_file()
        and not (root / "train-images-idx3-ubyte").is_file()
    ):
        pytest.skip(f"Debian package dataset-fashion-mnist not installed ({root} has no files).")
    data = load_fashion_mnist(valid_fraction=0.1)
    assert data.x_train.shape == (54_000, 784)
    assert data.x_valid.shape == (6_000, 784)
    assert data.x_test.shape == (10_000, 784)
    assert data.num_classes == 10
    # Fashion-MNIST is balanced: 6000 per class in training, 1000 in test.
    pool = np.concatenate([data.y_train, data.y_valid])
    np.testing.assert_array_equal(np.bincount(pool, minlength=10), 6000)
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), 1000)
    assert 0.0 == data.x_test.min() and data.x_test.max() == 1.0


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_scaling(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10 and digits.num_features == 64
    n_pool = digits.x_train.shape[0] + digits.x_valid.shape[0]
    assert n_pool + digits.x_test.shape[0] == 1797
    assert digits.x_test.shape[0] == round(0.2 * 1797)
    assert digits.x_valid.shape[0] == round(0.1 * n_pool)
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    for split in ("train", "valid", "test"):
        assert set(np.unique(getattr(digits, f"y_{split}"))) == set(range(10)), split


def test_digits_splits_partition_the_data_set(digits):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    original = sklearn_datasets.load_digits()
    ours = np.concatenate(
        [
            np.column_stack([d * 16.0, y])
            for d, y in (
                (digits.x_train, digits.y_train),
                (digits.x_valid, digits.y_valid),
                (digits.x_test, digits.y_test),
            )
        ]
    )
    theirs = np.column_stack([original.data, original.target])
    np.testing.assert_array_equal(np.unique(ours, axis=0), np.unique(theirs, axis=0))
    assert ours.shape == theirs.shape


def test_digits_validation_is_stratified(digits):
    pool = np.bincount(np.concatenate([digits.y_train, digits.y_valid]), minlength=10)
    val = np.bincount(digits.y_valid, minlength=10)
    assert np.all(np.abs(val - 0.1 * pool) <= 1.0), (val, pool)


def test_digits_seeds(digits):
    assert_data_equal(digits, load_digits(seed=0))
    other = load_digits(seed=1)
    # The test split is fixed across seeds; the validation split is not.
    np.testing.assert_array_equal(other.x_test, digits.x_test)
    assert not np.array_equal(other.x_valid, digits.x_valid)


@pytest.mark.parametrize("valid_fraction", [0.25, 0.0])
def test_val_fraction(valid_fraction):
    data = load_digits(valid_fraction=valid_fraction)
    pool = data.x_train.shape[0] + data.x_valid.shape[0]
    assert data.x_valid.shape[0] == math.floor(valid_fraction * pool + 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1"])
def test_bad_val_fraction_raises(bad):
    with pytest.raises(ValueError, match="valid_fraction"):
        load_digits(valid_fraction=bad)


def test_data_arrays_are_read_only_views(digits):
    with pytest.raises(ValueError, match="read-only"):
        digits.x_train[0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        digits.y_train[0] = 1
    mine = np.zeros((4, 2), np.float32)
    labels = np.array([0, 1, 0, 1], np.int32)
    ClassificationData("toy", mine, labels, mine, labels, mine, labels, num_classes=2)
    mine[0, 0] = 1.0  # the caller's own arrays stay writable


def test_classification_data_validates():
    x, y = np.zeros((3, 2)), np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"y_train must lie in \[0, 2\)"):
        ClassificationData("toy", x, y, x, y % 2, x, y % 2, num_classes=2)
    with pytest.raises(ValueError, match="x_valid has 5 features"):
        ClassificationData("toy", x, y, np.zeros((3, 5)), y, x, y, num_classes=3)
    with pytest.raises(ValueError, match="2 rows"):
        ClassificationData("toy", x, y, x[:2], y, x, y, num_classes=3)
    with pytest.raises(ValueError, match="noisy_mask"):
        ClassificationData("toy", x, y, x, y, x, y, num_classes=3, noisy_mask=np.ones(3, bool))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_matches_the_authors_problem():
    data = load_synthetic(seed=0)
    assert data.num_classes == 20 and data.num_features == 14
    assert data.x_train.shape == (7200, 14)
    assert data.x_valid.shape == (800, 14)
    assert data.x_test.shape == (2000, 14)
    assert set(np.unique(data.y_test)) == set(range(20))
    # Standardised with the training split's statistics.
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, rtol=1e-4)


def test_synthetic_seeds_and_options():
    a = load_synthetic(seed=4, n_samples=600)
    assert_data_equal(a, load_synthetic(seed=4, n_samples=600))
    c = load_synthetic(seed=5, n_samples=600)
    assert not np.array_equal(a.x_test, c.x_test)
    flipped = load_synthetic(seed=4, n_samples=600, flip_y=0.5)
    assert not np.array_equal(flipped.y_test, a.y_test)
    with pytest.raises(ValueError, match="flip_y"):
        load_synthetic(flip_y=2.0)


# ----------------------------------------------------------------------------- npz


def save(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_without_test_arrays_is_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (500, 3, 2))
    path = save(tmp_path, x=x, y=np.arange(500) % 5)
    data = load_npz(path, seed=0)
    assert data.name == "data"
    assert data.x_test.shape == (100, 6)
    assert data.x_train.shape == (360, 6) and data.x_valid.shape == (40, 6)
    assert data.num_classes == 5
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    raw = load_npz(path, standardize=False)
    assert raw.x_train.mean() == pytest.approx(3.0, abs=0.3)
    assert_data_equal(data, load_npz(path, seed=0))
    assert not np.array_equal(data.x_test, load_npz(path, seed=1).x_test)


def test_npz_with_test_arrays_and_float_labels(tmp_path):
    path = save(
        tmp_path,
        x=np.ones((50, 4)),
        y=(np.arange(50) % 3).astype(np.float64),
        x_test=np.ones((7, 4)),
        y_test=np.array([0, 1, 2, 0, 1, 2, 3]),
    )
    data = load_classification(path, valid_fraction=0.2)
    assert data.x_test.shape == (7, 4) and data.num_classes == 4
    assert data.x_train.shape[0] == 40 and data.x_valid.shape[0] == 10
    assert data.y_train.dtype == np.int32


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.ones((4, 2))}, r"lacks the array\(s\) \['y'\]"),
        ({"features": np.ones((4, 2)), "y": np.zeros(4)}, r"\['x'\]"),
        ({"x": np.ones((4, 2)), "y": np.zeros(5, int)}, "first dimensions must match"),
        ({"x": np.ones((4, 2)), "y": np.array([0, 1, 0.5, 1])}, "non-integers"),
        ({"x": np.ones((4, 2)), "y": np.array([0, 1, -1, 1])}, r"lie in \[0, 2\)"),
        ({"x": np.ones((4, 2)), "y": np.array(["a", "b", "a", "b"])}, "integer class labels"),
        ({"x": np.ones((4, 2)), "y": np.zeros((4, 1), int)}, "1-D"),
        ({"x": np.ones((4, 2)), "y": np.zeros(4, int), "x_test": np.ones((2, 2))}, "both"),
        (
            {
                "x": np.ones((4, 2)),
                "y": np.zeros(4, int),
                "x_test": np.ones((2, 3)),
                "y_test": np.zeros(2, int),
            },
            "'x_test' has 3",
        ),
    ],
)
def test_bad_npz_files_raise_clear_errors(tmp_path, arrays, match):
    path = save(tmp_path, **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(path)


def test_npz_labels_outside_num_classes(tmp_path):
    path = save(tmp_path, x=np.ones((20, 2)), y=np.arange(20) % 4)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        load_npz(path, num_classes=3)
    assert load_npz(path, num_classes=6).num_classes == 6


def test_npz_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "absent.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_npz(broken)


def with_value(shape, index, value, dtype=np.float64):
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    x[index] = value
    return x


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        # One NaN feature in the training pool: named by key, row and flattened feature.
        (
            {"x": with_value((20, 3), (7, 1), np.nan), "y": np.arange(20) % 2},
            r"'x' holds a non-finite value \(nan\) in row 7 \(feature 1\); features must be "
            r"finite; drop or impute it\.$",
        ),
        # Feature index of a [N, 2, 2] array is the flattened one: (1, 0) -> 2.
        (
            {"x": with_value((20, 2, 2), (4, 1, 0), -np.inf), "y": np.arange(20) % 2},
            r"'x' holds a non-finite value \(-inf\) in row 4 \(feature 2\)",
        ),
        # In the test arrays too.
        (
            {
                "x": np.ones((20, 3)),
                "y": np.arange(20) % 2,
                "x_test": with_value((5, 3), (3, 0), np.inf, np.float32),
                "y_test": np.arange(5) % 2,
            },
            r"'x_test' holds a non-finite value \(inf\) in row 3 \(feature 0\)",
        ),
        # Finite in float64 but not in float32.
        (
            {"x": with_value((20, 3), (2, 2), 1e300), "y": np.arange(20) % 2},
            r"'x' \(as float32\) holds a non-finite value \(inf\) in row 2 \(feature 2\); the "
            r"value overflows float32",
        ),
        ({"x": np.ones((4, 2), complex), "y": np.zeros(4, int)}, r"'x' must be real-valued"),
        # Float labels: NaN is named with its row; out-of-range labels name the first row.
        (
            {"x": np.ones((4, 2)), "y": np.array([0.0, 1.0, np.nan, 1.0])},
            r"'y' must hold integer class labels; found non-integers \[nan\] \(the first at row "
            r"2\)",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.array([0, 1, 1, 0]), "num_classes": np.array(1)},
            r"'y' must lie in \[0, 1\); found labels from 0 to 1 \(the first outside at row 1: "
            r"1\)",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.array([0, 1, 1e300, 1])},
            r"'y' holds labels too large to be class ids",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.zeros(4, int), "num_classes": np.array(2.5)},
            r"'num_classes' must be a positive integer scalar; got 2.5",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.zeros(4, int), "num_classes": np.array(np.nan)},
            r"'num_classes' must be a positive integer scalar; got nan",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.zeros(4, int), "num_classes": np.array([2, 3])},
            r"'num_classes' must be a positive integer scalar; got \[2, 3\]",
        ),
        (
            {"x": np.ones((4, 2)), "y": np.zeros(4, int), "num_classes": np.array(0)},
            r"'num_classes' must be a positive integer scalar; got 0",
        ),
    ],
)
def test_npz_bad_values_name_the_array_and_row(tmp_path, arrays, match):
    path = save(tmp_path, **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(path)
    with pytest.raises(ValueError, match=match):
        load_classification(path)


def test_npz_finite_data_still_loads_and_stored_num_classes_is_used(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 3))
    x[5, 1] = 3.0e38  # large but representable in float32
    path = save(tmp_path, x=x, y=np.arange(40) % 2, num_classes=np.array(3.0))
    data = load_npz(path, standardize=False)
    assert data.num_classes == 3
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_test).all()


def test_classification_data_rejects_non_finite_features():
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, 0])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"^x_valid holds a non-finite value \(nan\) in row 2 \(feature 1\)"
    ):
        ClassificationData("toy", x, y, bad, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match=r"^x_test holds a non-finite value \(inf\) in row 0"):
        ClassificationData("toy", x, y, x, y, np.full((3, 2), np.inf), y, num_classes=2)


# ----------------------------------------------------------------------------- entry point


def test_load_classification_dispatches_and_adds_noise(digits):
    assert_data_equal(load_classification("digits"), digits)
    noisy = load_classification("digits", noise_rate=0.3, noise_seed=5)
    np.testing.assert_array_equal(noisy.y_train, symmetric_noise(digits, 0.3, seed=5).y_train)
    assert load_classification("synthetic", n_samples=400).num_classes == 20


def test_load_classification_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_classification("mnist")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['max_train'\]"):
        load_classification("digits", max_train=10)


def test_missing_sklearn_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install amal_jax\[bench\]"):
        cls.load_digits()
