"""Label models: majority vote, LabelModel and Dawid-Skene EM."""

from __future__ import annotations

import numpy as np
import pytest

from amal_jax.weak.label_models import DawidSkene, LabelModel, check_votes, majority_vote

# Majority vote on a hand-made matrix (C = 3).
MV_L = [
    [0, 0, 1],  # 0 wins 2:1
    [1, -1, 1],  # 1
    [-1, -1, -1],  # all abstain
    [0, 1, -1],  # tie 0 / 1
    [2, 1, -1],  # tie 1 / 2
    [2, 2, 2],  # 2
]

# Degenerate vote matrices every label model must fit.
EDGE_CASES = [
    np.full((4, 3), -1),  # nobody ever votes
    np.array([[0, -1, 1]]),  # one row
    np.array([[0, -1], [0, -1], [1, -1]]),  # an LF that never votes
    np.array([[1, 1], [1, 1]]),  # a single pattern
]


def test_majority_vote_lowest_tie_break():
    mv = majority_vote(MV_L, 3)
    np.testing.assert_array_equal(mv.labels, [0, 1, -1, 0, 1, 2])
    np.testing.assert_array_equal(
        mv.counts, [[2, 1, 0], [0, 2, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 3]]
    )
    np.testing.assert_allclose(
        mv.probs,
        [[2 / 3, 1 / 3, 0], [0, 1, 0], [1 / 3] * 3, [0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1]],
        rtol=1e-6,
    )
    assert mv.labels.dtype == np.int32 and mv.probs.dtype == np.float32


def test_majority_vote_abstain_and_random_tie_breaks():
    np.testing.assert_array_equal(
        majority_vote(MV_L, 3, tie_break="abstain").labels, [0, 1, -1, -1, -1, 2]
    )
    # Many tied rows: random picks only tied classes, both of them, reproducibly per seed.
    L = np.array([[0, 1, -1, 2]] * 400)
    picks = majority_vote(L, 3, tie_break="random", seed=1).labels
    assert set(np.unique(picks)) == {0, 1, 2}
    np.testing.assert_array_equal(picks, majority_vote(L, 3, tie_break="random", seed=1).labels)
    assert not np.array_equal(picks, majority_vote(L, 3, tie_break="random", seed=2).labels)
    L = np.array([[0, 1, -1]] * 400)
    assert set(np.unique(majority_vote(L, 3, tie_break="random").labels)) == {0, 1}
    # Rows without ties are unaffected.
    np.testing.assert_array_equal(
        majority_vote(MV_L, 3, tie_break="random").labels[[0, 1, 2, 5]], [0, 1, -1, 2]
    )


def test_majority_vote_errors():
    with pytest.raises(ValueError, match="tie_break must be one of"):
        majority_vote(MV_L, 3, tie_break="first")
    with pytest.raises(ValueError, match=r"L\[4, 0\] = 2 is outside \[-1, 2\)"):
        majority_vote(MV_L, 2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        majority_vote(MV_L, 1)
    with pytest.raises(ValueError, match=r"L must be an \[n, m\] vote matrix"):
        check_votes([0, 1], 2)
    with pytest.raises(ValueError, match="L must hold integers"):
        check_votes([[0.5]], 2)


# --------------------------------------------------------------------------------------------
# Dawid-Skene on synthetic votes with known accuracies

ACCURACIES = np.array([0.9, 0.8, 0.7, 0.65, 0.6])


def synthetic_votes(seed, *, n=3000, num_classes=2, coverage=0.7, prior=None):
    """Each LF votes with probability ``coverage``; right with its accuracy, else uniformly
    one of the other classes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(num_classes, size=n, p=prior)
    m = len(ACCURACIES)
    votes = rng.random((n, m)) < coverage
    right = rng.random((n, m)) < ACCURACIES
    wrong = (y[:, None] + rng.integers(1, num_classes, size=(n, m))) % num_classes
    L = np.where(votes, np.where(right, y[:, None], wrong), -1)
    return L, y


@pytest.mark.parametrize(("seed", "num_classes"), [(0, 2), (1, 2), (2, 3)])
def test_dawid_skene_recovers_lf_accuracies_and_beats_majority_vote(seed, num_classes):
    L, y = synthetic_votes(seed, num_classes=num_classes)
    model = DawidSkene(num_classes).fit(L)
    assert model.converged_
    np.testing.assert_allclose(model.accuracies_, ACCURACIES, atol=0.05)
    empirical = [np.mean(L[L[:, j] >= 0, j] == y[L[:, j] >= 0]) for j in range(L.shape[1])]
    np.testing.assert_allclose(model.accuracies_, empirical, atol=0.05)
    # The accuracies are ordered as the truth (the model weighs the good LFs more).
    assert np.all(np.diff(model.accuracies_[:3]) < 0)
    probs = model.predict_proba(L)
    ds_acc = np.mean(probs.argmax(axis=1) == y)
    mv_acc = np.mean(majority_vote(L, num_classes).labels == y)
    assert ds_acc > mv_acc + 0.02, (ds_acc, mv_acc)


def test_dawid_skene_recovers_an_imbalanced_prior():
    prior = np.array([0.6, 0.3, 0.1])
    L, _ = synthetic_votes(3, num_classes=3, prior=prior)
    model = DawidSkene(3).fit(L)
    np.testing.assert_allclose(model.class_prior_, prior, atol=0.05)


def test_dawid_skene_soft_labels_are_distributions():
    L, _ = synthetic_votes(4, n=500, num_classes=3)
    L[:7] = -1  # all-abstain rows
    model = DawidSkene(3).fit(L)
    probs = model.predict_proba(L)
    assert probs.dtype == np.float32 and probs.shape == (500, 3)
    assert np.all(np.isfinite(probs)) and np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[:7], np.tile(model.class_prior_, (7, 1)), rtol=1e-6)
    assert not np.allclose(probs[7:], model.class_prior_)
    np.testing.assert_array_equal(model.predict(L), probs.argmax(axis=1))
    np.testing.assert_allclose(model.confusion_.sum(axis=2), 1.0)


@pytest.mark.parametrize(
    "L",
    EDGE_CASES,
)
def test_dawid_skene_never_nan_on_degenerate_votes(L):
    model = DawidSkene(2).fit(L)
    probs = model.predict_proba(L)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(model.accuracies_))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(model.class_prior_))


def test_dawid_skene_with_every_gold_label_is_the_smoothed_count_estimate():
    # Clamped posteriors: the M-step is a closed form (counts + 1, normalised).
    L = np.array([[0, 1], [0, -1], [1, 1], [1, -1], [0, 0]])
    y = np.array([0, 0, 1, 1, 0])
    model = DawidSkene(2, smoothing=1.0).fit(L, y)
    # LF 0 given y = 0: emits 0 three times, 1 never, abstains never -> (3+1, 0+1, 0+1) / 6.
    np.testing.assert_allclose(model.confusion_[0, 0], [4 / 6, 1 / 6, 1 / 6])
    # LF 1 given y = 1: emits 1 once, abstains once -> (0+1, 1+1, 1+1) / 5.
    np.testing.assert_allclose(model.confusion_[1, 1], [1 / 5, 2 / 5, 2 / 5])
    np.testing.assert_allclose(model.class_prior_, [(3 + 1) / 7, (2 + 1) / 7])
    assert model.n_iter_ <= 3


def test_dawid_skene_fixed_class_prior():
    L, _ = synthetic_votes(5, n=400)
    model = DawidSkene(2, class_prior=[0.8, 0.2]).fit(L)
    np.testing.assert_array_equal(model.class_prior_, [0.8, 0.2])
    np.testing.assert_allclose(model.predict_proba([[-1] * 5])[0], [0.8, 0.2], rtol=1e-6)


def test_dawid_skene_uses_gold_labels_to_orient_the_classes():
    # Every LF is mostly wrong: unsupervised EM (started from the majority vote) takes them as
    # mostly right; enough clamped gold labels turn the estimate around.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    L = np.where(rng.random((1000, 3)) < 0.8, 1 - y[:, None], y[:, None])
    unsupervised = DawidSkene(2).fit(L)
    gold = np.where(np.arange(1000) < 700, y, -1)
    semi = DawidSkene(2).fit(L, gold)
    assert np.all(unsupervised.accuracies_ > 0.7)
    np.testing.assert_allclose(semi.accuracies_, 0.2, atol=0.05)
    assert np.mean(unsupervised.predict(L) == y) < 0.2
    assert np.mean(semi.predict(L)[700:] == y[700:]) > 0.8


def test_dawid_skene_errors():
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        DawidSkene(2, smoothing=0.0)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        DawidSkene(2, max_iter=0)
    with pytest.raises(ValueError, match="class_prior must be 2 positive probabilities"):
        DawidSkene(2, class_prior=[0.5, 0.6])
    with pytest.raises(ValueError, match="not fitted yet"):
        DawidSkene(2).predict_proba([[0]])
    model = DawidSkene(2).fit([[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="L has 3 LFs but the model was fitted with 2"):
        model.predict_proba([[0, 1, 1]])
    with pytest.raises(ValueError, match=r"L\[0, 1\] = 2 is outside"):
        DawidSkene(2).fit([[0, 2]])
    with pytest.raises(ValueError, match=r"y\[1\] = 2 is outside \[-1, 2\)"):
        DawidSkene(2).fit([[0, 1], [1, 1]], [0, 2])
    with pytest.raises(ValueError, match="at least one row"):
        DawidSkene(2).fit(np.zeros((0, 3), int))


# --------------------------------------------------------------------------------------------
# LabelModel on votes drawn from a known generative model

# The tolerance of the recovered per-LF accuracies: with ~1500+ votes per LF the sampling
# error of an accuracy is ~0.01, so 0.04 leaves room for the estimate's bias, not for a
# wrong model.
ACCURACY_TOL = 0.04


def generative_votes(seed, *, n, balance, accuracy, propensity):
    """``y ~ balance``; LF ``j`` votes with probability ``propensity[j]`` whatever the class,
    right with probability ``accuracy[j]``, else one of the other classes uniformly. Returns
    ``(L, y, true posteriors)``."""
    rng = np.random.default_rng(seed)
    balance, accuracy = np.asarray(balance), np.asarray(accuracy)
    C, m = len(balance), len(accuracy)
    y = rng.choice(C, size=n, p=balance)
    votes = rng.random((n, m)) < np.asarray(propensity)
    right = rng.random((n, m)) < accuracy
    wrong = (y[:, None] + rng.integers(1, C, size=(n, m))) % C
    L = np.where(votes, np.where(right, y[:, None], wrong), -1)
    log_post = np.tile(np.log(balance), (n, 1))
    for c in range(C):
        log_post[:, c] += np.where(
            L >= 0, np.where(L == c, np.log(accuracy), np.log((1 - accuracy) / (C - 1))), 0
        ).sum(axis=1)
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    return L, y, post / post.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("seed", "balance", "given"),
    [(0, [0.5, 0.5], False), (1, [1 / 3] * 3, False), (2, [0.6, 0.3, 0.1], True)],
)
def test_label_model_recovers_accuracies_and_the_true_posterior(seed, balance, given):
    accuracy = np.array([0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.75, 0.55])
    propensity = np.array([0.5, 0.3, 0.6, 0.7, 0.4, 0.5, 0.2, 0.6])
    L, y, post = generative_votes(
        seed, n=5000, balance=balance, accuracy=accuracy, propensity=propensity
    )
    model = LabelModel(len(balance)).fit(L, class_balance=balance if given else None)
    assert model.converged_ and model.n_iter_ < model.max_iter
    np.testing.assert_allclose(model.accuracies_, accuracy, atol=ACCURACY_TOL)
    np.testing.assert_allclose(model.coverage_, propensity, atol=0.03)
    # Within one point of the Bayes posterior of the true model.
    covered = (L >= 0).any(axis=1)
    true_acc = np.mean(post.argmax(axis=1)[covered] == y[covered])
    model_acc = np.mean(model.predict(L)[covered] == y[covered])
    assert model_acc >= true_acc - 0.01, (model_acc, true_acc)
    assert model_acc > np.mean(majority_vote(L, len(balance)).labels[covered] == y[covered])


def sparse_rules(seed, *, n=3000, num_classes=9, rules_per_class=18):
    """SemEval-like: many one-class rules, each firing on a few rows of its class (~1.1 rule
    a row) and rarely (1 / 100 as often) on others; an imbalanced class balance."""
    rng = np.random.default_rng(seed)
    balance = np.array([0.3, 0.18, 0.15, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03])[:num_classes]
    balance = balance / balance.sum()
    y = rng.choice(num_classes, size=n, p=balance)
    owner = np.repeat(np.arange(num_classes), rules_per_class)  # [m] each rule's class
    rate = rng.uniform(0.01, 0.11, size=owner.size)  # P(fires | its class)
    p_fire = np.where(owner[None, :] == y[:, None], rate, 0.01 * rate)
    L = np.where(rng.random(p_fire.shape) < p_fire, owner, -1)
    return L, y, balance


def test_label_model_does_not_collapse_with_many_sparse_rules():
    L, y, _ = sparse_rules(0)
    assert L.shape[1] >= 150
    model = LabelModel(9).fit(L)
    pred = model.predict(L)
    covered = (L >= 0).any(axis=1)
    mv = majority_vote(L, 9).labels
    acc = np.mean(pred[covered] == y[covered])
    # Here the majority vote is the Bayes rule (every rule has the same likelihood ratio);
    # the fitted model stays within a few points of it (DawidSkene falls to ~30%).
    assert acc >= np.mean(mv[covered] == y[covered]) - 0.03
    # Every class keeps at least half its share of the covered rows.
    shares = np.bincount(pred[covered], minlength=9) / covered.sum()
    truth = np.bincount(y[covered], minlength=9) / covered.sum()
    assert np.all(shares > 0.5 * truth), (shares, truth)
    # Rules are one-class and accurate: the learned accuracies rise above the prior's.
    assert np.median(model.accuracies_) > model.prior_accuracy


def test_label_model_abstain_only_rows_get_the_class_balance():
    L, _, _ = generative_votes(
        3, n=600, balance=[0.5, 0.3, 0.2], accuracy=[0.8] * 4, propensity=[0.4] * 4
    )
    L[:9] = -1
    for balance in (None, [0.5, 0.3, 0.2]):
        model = LabelModel(3).fit(L, class_balance=balance)
        probs = model.predict_proba(L)
        assert probs.dtype == np.float32 and probs.shape == (600, 3)
        assert np.all(np.isfinite(probs))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(probs[:9], np.tile(model.class_balance_, (9, 1)), rtol=1e-6)
        assert not np.allclose(probs[9:], model.class_balance_)
    np.testing.assert_allclose(model.class_balance_, [0.5, 0.3, 0.2])
    np.testing.assert_allclose(model.mu_.sum(axis=2), 1.0)


def test_label_model_predict_tie_breaks_and_determinism():
    L, _, _ = generative_votes(
        4, n=400, balance=[0.5, 0.5], accuracy=[0.8, 0.7, 0.6], propensity=[0.5] * 3
    )
    model = LabelModel(2).fit(L)
    again = LabelModel(2).fit(L)
    np.testing.assert_array_equal(model.mu_, again.mu_)  # no hidden randomness
    blank = np.full((200, 3), -1)  # uniform balance: every class ties
    assert set(model.predict(blank).tolist()) == {0}
    assert set(model.predict(blank, tie_break="abstain").tolist()) == {-1}
    picks = model.predict(blank, tie_break="random", seed=1)
    assert set(picks.tolist()) == {0, 1}
    np.testing.assert_array_equal(picks, model.predict(blank, tie_break="random", seed=1))
    assert not np.array_equal(picks, model.predict(blank, tie_break="random", seed=2))
    voted = (L >= 0).any(axis=1)
    for tie_break in ("lowest", "random", "abstain"):
        np.testing.assert_array_equal(
            model.predict(L[voted], tie_break=tie_break)[L[voted].max(axis=1) >= 0][:50],
            model.predict_proba(L[voted]).argmax(axis=1)[:50],
        )


def test_label_model_gold_rows_orient_the_classes():
    # Every LF mostly wrong: unsupervised EM (from the majority vote) trusts them; enough
    # gold rows turn the estimate around.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    L = np.where(rng.random((1000, 3)) < 0.8, 1 - y[:, None], y[:, None])
    gold = np.where(np.arange(1000) < 700, y, -1)
    unsupervised = LabelModel(2).fit(L)
    semi = LabelModel(2).fit(L, gold)
    assert np.all(unsupervised.accuracies_ > 0.7)
    np.testing.assert_allclose(semi.accuracies_, 0.2, atol=0.05)
    assert np.mean(semi.predict(L)[700:] == y[700:]) > 0.8


@pytest.mark.parametrize(
    "L",
    [*EDGE_CASES, np.ones((50, 2), int)],  # and LFs voting on every row, one class
)
def test_label_model_never_nan_on_degenerate_votes(L):
    model = LabelModel(2).fit(L)
    probs = model.predict_proba(L)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(model.accuracies_))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_label_model_errors():
    with pytest.raises(ValueError, match=r"prior_accuracy must be a number in \(1/C, 1\)"):
        LabelModel(3, prior_accuracy=0.3)
    with pytest.raises(ValueError, match="prior_strength must be a number > 0"):
        LabelModel(2, prior_strength=0)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        LabelModel(2, max_iter=0)
    with pytest.raises(ValueError, match="tol must be a number >= 0"):
        LabelModel(2, tol=-1.0)
    with pytest.raises(ValueError, match="class_balance must be 2 positive probabilities"):
        LabelModel(2).fit([[0, 1]], class_balance=[0.5, 0.6])
    with pytest.raises(ValueError, match="not fitted yet"):
        LabelModel(2).predict_proba([[0]])
    model = LabelModel(2).fit([[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="L has 3 LFs but the model was fitted with 2"):
        model.predict([[0, 1, 1]])
    with pytest.raises(ValueError, match="tie_break must be one of"):
        model.predict([[0, 1]], tie_break="first")
    with pytest.raises(ValueError, match=r"y\[1\] = 2 is outside \[-1, 2\)"):
        LabelModel(2).fit([[0, 1], [1, 1]], [0, 2])
    with pytest.raises(ValueError, match="at least one row"):
        LabelModel(2).fit(np.zeros((0, 3), int))
