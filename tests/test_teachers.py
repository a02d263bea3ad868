"""Teacher MLPs and CNNs and their on-disk logit cache (amal_jax.distill.teachers)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from amal_jax.distill import teachers
from amal_jax.distill.classification import (
    ClassificationData,
    load_digits,
    load_npz,
    symmetric_noise,
)
from amal_jax.distill.models import MLP, TEACHER_NAMES, TeacherCNN
from amal_jax.distill.teachers import (
    TeacherConfig,
    default_cache_dir,
    fit_teacher,
    guess_image_shape,
    teacher_cache_key,
    teacher_logits,
    train_teacher,
    train_teachers,
)

TINY = TeacherConfig(hidden=(16,), epochs=2, batch_size=64, learning_rate=3e-3)
SMALL = TeacherConfig(hidden=(32,), epochs=10, batch_size=64, learning_rate=3e-3)
TINY_CNN = TeacherConfig(
    kind="cnn", conv=(4,), hidden=(), epochs=1, batch_size=64, learning_rate=1e-2
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture
def count_fits(monkeypatch):
    """Counts calls of the trainer that train_teacher uses."""
    calls = []
    real = teachers.fit_teacher

    def counting(data, config):
        calls.append(config)
        return real(data, config)

    monkeypatch.setattr(teachers, "fit_teacher", counting)
    return calls


def test_second_call_reads_the_cache(digits, tmp_path, monkeypatch):
    first = train_teacher(digits, TINY, cache_dir=tmp_path)
    assert not first.from_cache
    assert first.cache_path is not None and first.cache_path.is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("train_teacher trained although the cache holds these logits")

    monkeypatch.setattr(teachers, "fit_teacher", no_training)
    second = train_teacher(digits, TINY, cache_dir=tmp_path)
    assert second.from_cache
    assert second.cache_key == first.cache_key
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(second, split), getattr(first, split))
    assert second.test_accuracy == first.test_accuracy
    assert second.valid_accuracy == first.valid_accuracy
    assert second.config == TINY
    # Written atomically: only the final file, no temporary left behind.
    assert [p.name for p in tmp_path.iterdir()] == [f"teacher-{first.cache_key}.npz"]


def test_logit_shapes_and_accuracy(digits, tmp_path):
    result = train_teacher(digits, TINY, cache_dir=tmp_path)
    assert result.train.shape == (digits.x_train.shape[0], 10)
    assert result.valid.shape == (digits.x_valid.shape[0], 10)
    assert result.test.shape == (digits.x_test.shape[0], 10)
    assert result.train.dtype == np.float32
    expected = np.mean(result.test.argmax(1) == digits.y_test)
    assert result.test_accuracy == pytest.approx(expected)


def test_a_tiny_teacher_beats_chance_on_digits(digits):
    result = train_teacher(digits, SMALL, use_cache=False)
    assert result.test_accuracy > 0.85  # chance is 0.1
    assert result.cache_path is None


def change_one_label(data: ClassificationData) -> ClassificationData:
    y = np.array(data.y_train)
    y[0] = (y[0] + 1) % data.num_classes
    return dataclasses.replace(data, y_train=y, noisy_mask=None)


def test_changing_one_label_invalidates_the_cache(digits, tmp_path, count_fits):
    first = train_teacher(digits, TINY, cache_dir=tmp_path)
    changed = train_teacher(change_one_label(digits), TINY, cache_dir=tmp_path)
    assert not changed.from_cache
    assert changed.cache_key != first.cache_key
    assert len(count_fits) == 2
    assert train_teacher(digits, TINY, cache_dir=tmp_path).from_cache
    assert len(count_fits) == 2


@pytest.mark.parametrize(
    "change",
    [{"epochs": 3}, {"hidden": (17,)}, {"seed": 1}, {"learning_rate": 1e-3}],
)
def test_changing_the_config_invalidates_the_cache(digits, tmp_path, count_fits, change):
    train_teacher(digits, TINY, cache_dir=tmp_path)
    other = train_teacher(digits, dataclasses.replace(TINY, **change), cache_dir=tmp_path)
    assert not other.from_cache
    assert len(count_fits) == 2


def test_cache_key_covers_every_field_and_array(digits):
    base = teacher_cache_key(digits, TINY)
    assert base == teacher_cache_key(load_digits(seed=0), TINY)  # contents, not identity
    others = {
        "hidden": (16, 16),
        "epochs": TINY.epochs + 1,
        "learning_rate": TINY.learning_rate * 2,
        "batch_size": TINY.batch_size + 1,
        "seed": TINY.seed + 1,
        "dropout": 0.5,
        "weight_decay": 1e-4,
        "kind": "cnn",  # with its default convolutions
    }
    cnn_only = {"conv": (8,), "image_shape": (4, 16, 1)}  # an MLP has neither
    assert set(others) | set(cnn_only) == {f.name for f in dataclasses.fields(TeacherConfig)}
    for name, other in others.items():
        conv = {"conv": None} if name == "kind" else {}
        changed = dataclasses.replace(TINY, **{name: other}, **conv)
        assert teacher_cache_key(digits, changed) != base, name
    cnn = teacher_cache_key(digits, TINY_CNN)
    for name, other in cnn_only.items():
        changed = dataclasses.replace(TINY_CNN, **{name: other})
        assert teacher_cache_key(digits, changed) != cnn, name
    # The key hashes the resolved image shape: None means the data's own (8, 8, 1).
    explicit = dataclasses.replace(TINY_CNN, image_shape=(8, 8, 1))
    assert teacher_cache_key(digits, explicit) == cnn
    for field in ("x_train", "x_valid", "y_valid", "x_test", "y_test"):
        array = np.array(getattr(digits, field))
        array.flat[0] = array.flat[0] + 1 if field[0] == "x" else (array.flat[0] + 1) % 10
        changed = dataclasses.replace(digits, **{field: array})
        assert teacher_cache_key(changed, TINY) != base, field
    assert teacher_cache_key(symmetric_noise(digits, 0.1, seed=0), TINY) != base
    assert teacher_cache_key(dataclasses.replace(digits, name="renamed"), TINY) == base


def test_an_unusable_cache_file_is_retrained_and_replaced(digits, tmp_path, count_fits):
    path = tmp_path / f"teacher-{teacher_cache_key(digits, TINY)}.npz"
    path.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="unusable teacher cache"):
        result = train_teacher(digits, TINY, cache_dir=tmp_path)
    assert not result.from_cache
    assert len(count_fits) == 1
    assert train_teacher(digits, TINY, cache_dir=tmp_path).from_cache


def test_use_cache_false_writes_nothing(digits, tmp_path, count_fits):
    train_teacher(digits, TINY, cache_dir=tmp_path, use_cache=False)
    train_teacher(digits, TINY, cache_dir=tmp_path, use_cache=False)
    assert list(tmp_path.iterdir()) == []
    assert len(count_fits) == 2


def test_default_cache_dir_follows_xdg(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "amal_jax" / "teachers"
    result = train_teacher(digits, TINY)
    assert result.cache_path.parent == tmp_path / "amal_jax" / "teachers"
    assert result.cache_path.is_file()


def test_logits_come_from_eval_mode(digits):
    config = dataclasses.replace(TINY, dropout=0.5)
    variables = fit_teacher(digits, config)
    x = np.asarray(digits.x_test)
    a = teacher_logits(config, variables, x)
    b = teacher_logits(config, variables, x)
    np.testing.assert_array_equal(a, b)
    # Training mode really is stochastic for this teacher, so the equality above means
    # something; and eval mode is the plain deterministic forward.
    model = MLP(num_classes=10, hidden=config.hidden, dropout=config.dropout, names=TEACHER_NAMES)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(train_a, train_b)
    np.testing.assert_allclose(a, model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)
    # train_teacher returns exactly these (training is deterministic given the seed).
    result = train_teacher(digits, config, use_cache=False)
    np.testing.assert_allclose(result.test, a, rtol=1e-5, atol=1e-5)


def test_chunked_logits_match_one_forward(digits):
    variables = fit_teacher(digits, TINY)
    x = np.random.default_rng(0).random((teachers._EVAL_CHUNK + 123, 64), np.float32)
    model = MLP(num_classes=10, hidden=TINY.hidden, names=TEACHER_NAMES)
    np.testing.assert_allclose(
        teacher_logits(TINY, variables, x), model.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    assert teacher_logits(TINY, variables, x[:0]).shape == (0, 10)


def test_teacher_learns_the_training_labels_not_the_clean_ones(digits):
    # Relabel every training example c -> c + 1: a teacher that learns y_train (as it must,
    # the clean labels are the student's secret) predicts the shifted class on the test set.
    shifted = dataclasses.replace(
        digits, y_train=(np.asarray(digits.y_train) + 1) % 10, noisy_mask=None
    )
    result = train_teacher(shifted, SMALL, use_cache=False)
    predicted = result.test.argmax(1)
    assert np.mean(predicted == (digits.y_test + 1) % 10) > 0.8
    assert result.test_accuracy < 0.1  # scored against the clean y_test


def test_several_teachers(digits, tmp_path):
    configs = [dataclasses.replace(TINY, seed=s) for s in (0, 1)]
    a, b = train_teachers(digits, configs, cache_dir=tmp_path)
    assert not np.allclose(a.train, b.train)
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="at least one"):
        train_teachers(digits, [], cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden": (0,)}, "hidden width"),
        ({"hidden": 5}, "sequence of widths"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_configs_raise(change, match):
    with pytest.raises(ValueError, match=match):
        TeacherConfig(**change)


def test_bad_inputs_raise(digits):
    with pytest.raises(ValueError, match="ClassificationData"):
        train_teacher({"x": 1}, TINY, use_cache=False)
    with pytest.raises(ValueError, match="TeacherConfig"):
        train_teacher(digits, {"hidden": (4,)}, use_cache=False)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        teacher_logits(TINY, fit_teacher(digits, TINY), np.zeros(3))


def test_cnn_teacher_trains_and_caches(digits, tmp_path, count_fits):
    first = train_teacher(digits, TINY_CNN, cache_dir=tmp_path)
    assert not first.from_cache and first.test.shape == (digits.x_test.shape[0], 10)
    assert first.test_accuracy > 0.5  # one epoch of a 4-channel CNN; chance is 0.1
    second = train_teacher(digits, TINY_CNN, cache_dir=tmp_path)
    assert second.from_cache and len(count_fits) == 1
    np.testing.assert_array_equal(second.test, first.test)
    # Same widths, other kind: a different teacher, so a different file.
    mlp = dataclasses.replace(TINY_CNN, kind="mlp", conv=None)
    assert teacher_cache_key(digits, mlp) != first.cache_key
    assert not train_teacher(digits, mlp, cache_dir=tmp_path).from_cache
    assert len(list(tmp_path.glob("teacher-*.npz"))) == 2
    assert "cnn" in repr(first)


def test_cnn_logits_are_the_eval_forward_of_the_image_model(digits):
    config = dataclasses.replace(TINY_CNN, dropout=0.5, hidden=(8,))
    variables = fit_teacher(digits, config)
    assert variables["params"]["conv_0"]["kernel"].shape == (3, 3, 1, 4)
    x = np.asarray(digits.x_test)
    model = TeacherCNN(num_classes=10, image_shape=(8, 8, 1), conv=(4,), hidden=(8,), dropout=0.5)
    np.testing.assert_allclose(
        teacher_logits(config, variables, x), model.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    # The rows really are read as images: transposing every image changes the logits.
    flipped = x.reshape(-1, 8, 8).transpose(0, 2, 1).reshape(-1, 64)
    assert not np.allclose(model.apply(variables, x), model.apply(variables, flipped))


def test_cnn_config_checks():
    assert TeacherConfig(kind="cnn").conv == (32, 64)
    assert TeacherConfig().conv == ()
    with pytest.raises(ValueError, match="kind"):
        TeacherConfig(kind="resnet")
    with pytest.raises(ValueError, match="no convolutions"):
        TeacherConfig(conv=(8,))
    with pytest.raises(ValueError, match="at least one convolution"):
        TeacherConfig(kind="cnn", conv=())
    with pytest.raises(ValueError, match="CNN teachers only"):
        TeacherConfig(image_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        TeacherConfig(kind="cnn", image_shape=(8, 8))
    with pytest.raises(ValueError, match="conv width"):
        TeacherConfig(kind="cnn", conv=(0,))


def test_cnn_image_shape_must_fit_the_features(digits):
    with pytest.raises(ValueError, match="holds 49 values"):
        teacher_cache_key(digits, dataclasses.replace(TINY_CNN, image_shape=(7, 7, 1)))
    x = np.random.default_rng(0).random((40, 6), np.float32)
    y = np.arange(40) % 2
    tabular = ClassificationData("t", x, y, x, y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="not a square number"):
        fit_teacher(tabular, TINY_CNN)
    # An explicit shape makes any feature count an image.
    assert fit_teacher(tabular, dataclasses.replace(TINY_CNN, image_shape=(2, 3, 1)))


def _npz(path, x, y, **extra):
    np.savez(path, x=x, y=y, **extra)
    return load_npz(path)


def test_npz_image_rule(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    assert guess_image_shape(load_digits()) == (8, 8, 1)
    # An image_shape entry makes any rows images (channels last), small ones too.
    data = _npz(tmp_path / "a.npz", rng.random((60, 4, 5, 3)), y, image_shape=np.array([4, 5, 3]))
    assert data.image_shape == (4, 5, 3) and guess_image_shape(data) == (4, 5, 3)
    data = _npz(tmp_path / "c.npz", rng.random((60, 6)), y, image_shape=np.array([2, 3]))
    assert guess_image_shape(data) == (2, 3, 1)
    # The stored shape of x alone decides nothing: [N, 4, 4] are 16 flat features.
    assert guess_image_shape(_npz(tmp_path / "b.npz", rng.random((60, 4, 4)), y)) is None
    # Flat rows: a perfect square of side >= 8 is read as one image, anything else is not.
    flat = _npz(tmp_path / "d.npz", rng.random((60, 64)), y)
    assert flat.image_shape is None and guess_image_shape(flat) == (8, 8, 1)
    assert guess_image_shape(_npz(tmp_path / "e.npz", rng.random((60, 49)), y)) is None
    assert guess_image_shape(_npz(tmp_path / "f.npz", rng.random((60, 6)), y)) is None
    with pytest.raises(ValueError, match="holds 8 values"):
        _npz(tmp_path / "g.npz", rng.random((60, 6)), y, image_shape=np.array([2, 4]))
    with pytest.raises(ValueError, match="1-D integer"):
        _npz(tmp_path / "h.npz", rng.random((60, 6)), y, image_shape=np.array([2.0, 3.0]))
    # The image shape survives label noise (teachers of noisy data are CNNs too).
    assert symmetric_noise(data, 0.2, seed=0).image_shape == (2, 3, 1)
