"""Label models: turn a labelling-function vote matrix ``L`` into (soft) training labels.

``L`` is ``[n, m]`` integer: ``L[i, j]`` is the class LF ``j`` votes for row ``i``, or ``-1``
when it abstains. Three models ship:

- :func:`majority_vote`: count the votes; hard labels and the vote shares;
- :class:`LabelModel`: the default label model, with the interface of Snorkel's
  ``LabelModel`` (``fit(L, class_balance=...)``, ``predict_proba``, ``predict(L,
  tie_break=...)``): per-LF class-conditional vote rates fitted by EM from the majority vote,
  Dirichlet priors on every LF's accuracy, a fixed class balance, and posteriors that, as
  Snorkel's, take evidence only from the votes cast;
- :class:`DawidSkene`: the classic generative model (Dawid & Skene, 1979) in which an
  abstain is an outcome like a vote, fitted by EM. It can drift to a degenerate class prior
  with many sparse rules (every row explained by one class); prefer :class:`LabelModel`.

All return float32 soft labels whose rows sum to 1, usable directly as auxiliary targets.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "TIE_BREAKS",
    "DawidSkene",
    "LabelModel",
    "MajorityVote",
    "check_gold",
    "check_votes",
    "majority_vote",
]

#: The tie-breaking rules of :func:`majority_vote`.
TIE_BREAKS = ("lowest", "random", "abstain")


def _check_num_classes(num_classes: Any) -> int:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    return int(num_classes)


def check_votes(L: Any, num_classes: int) -> np.ndarray:
    """Validates a vote matrix and returns it as an ``[n, m]`` int64 array.

    Args:
        L: ``[n, m]`` integer votes, ``-1`` = abstain, else a class in ``[0, C)``.
        num_classes: ``C``.

    Returns:
        ``L`` as an int64 array.

    Example:
        >>> check_votes([[0, -1], [1, 1]], 2).shape
        (2, 2)
    """
    L = np.asarray(L)
    if L.ndim != 2:
        raise ValueError(f"L must be an [n, m] vote matrix; got shape {L.shape}.")
    if L.size and not np.issubdtype(L.dtype, np.integer):
        raise ValueError(f"L must hold integers (-1 = abstain); got dtype {L.dtype}.")
    L = L.astype(np.int64)
    bad = np.argwhere((L < -1) | (L >= num_classes))
    if bad.size:
        i, j = bad[0]
        raise ValueError(
            f"L[{i}, {j}] = {L[i, j]} is outside [-1, {num_classes}) (-1 = abstain, else a "
            f"class); {len(bad)} such entries."
        )
    return L


def _vote_counts(L: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.zeros((L.shape[0], num_classes), dtype=np.int64)
    for c in range(num_classes):
        counts[:, c] = (L == c).sum(axis=1)
    return counts


def _patterns(L: np.ndarray, y: Any, num_classes: int):
    """The distinct ``(votes, gold)`` rows of ``L`` (gold -1 where unknown) and their counts:
    ``rows [u, m]``, ``gold [u]``, ``weights [u]`` float64. EM then runs once per pattern."""
    n, m = L.shape
    gold = np.full(n, -1, np.int64) if y is None else check_gold(y, n, num_classes)
    rows_gold, weights = np.unique(
        np.concatenate([L, gold[:, None]], axis=1), axis=0, return_counts=True
    )
    return rows_gold[:, :m], rows_gold[:, m], weights.astype(np.float64)


def _fitted_votes(model: Any, fitted: str, L: Any) -> np.ndarray:
    """``L`` checked against a fitted ``model`` (whose ``fitted`` attribute is ``[m, ...]``)."""
    if not hasattr(model, fitted):
        raise ValueError(f"this {type(model).__name__} is not fitted yet; call fit(L) first.")
    L = check_votes(L, model.num_classes)
    m = getattr(model, fitted).shape[0]
    if L.shape[1] != m:
        raise ValueError(f"L has {L.shape[1]} LFs but the model was fitted with {m}.")
    return L


class MajorityVote(NamedTuple):
    """The result of :func:`majority_vote`.

    Fields:
        labels: ``[n]`` int32 winning class; ``-1`` where every LF abstains (and on ties
            with ``tie_break="abstain"``).
        probs: ``[n, C]`` float32 vote shares (``counts / counts.sum``); uniform ``1 / C``
            where every LF abstains. Rows sum to 1.
        counts: ``[n, C]`` int32 number of votes for each class.
    """

    labels: np.ndarray
    probs: np.ndarray
    counts: np.ndarray


def majority_vote(
    L: Any, num_classes: int, *, tie_break: str = "lowest", seed: int = 0
) -> MajorityVote:
    """Majority vote of the labelling functions, with a deterministic tie-break.

    Args:
        L: ``[n, m]`` integer votes, ``-1`` = abstain.
        num_classes: ``C``.
        tie_break: what a row whose top classes tie gets:
            ``"lowest"``: the lowest tied class index (deterministic);
            ``"random"``: a tied class drawn uniformly with ``numpy.random.default_rng(seed)``
            (reproducible for a given ``seed``);
            ``"abstain"``: ``-1``, as Snorkel's ``MajorityLabelVoter`` does.
        seed: the seed of ``"random"``.

    Returns:
        A :class:`MajorityVote` ``(labels, probs, counts)``.

    Example:
        >>> mv = majority_vote([[0, 0, 1], [0, 1, -1], [-1, -1, -1]], 2)
        >>> mv.labels.tolist(), [round(float(p), 3) for p in mv.probs[0]]
        ([0, 0, -1], [0.667, 0.333])
    """
    num_classes = _check_num_classes(num_classes)
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}; got {tie_break!r}.")
    L = check_votes(L, num_classes)
    counts = _vote_counts(L, num_classes)
    total = counts.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    probs = np.where(total > 0, counts / np.maximum(total, 1), 1.0 / num_classes)

    top = counts == counts.max(axis=1, keepdims=True)
    labels = np.argmax(top, axis=1)  # the lowest tied class
    tied = top.sum(axis=1) > 1
    if tie_break == "random":
        rng = np.random.default_rng(seed)
        # A uniform key per (row, class); the largest key among the tied classes wins.
        keys = np.where(top, rng.random(counts.shape), -1.0)
        labels = np.where(tied, np.argmax(keys, axis=1), labels)
    elif tie_break == "abstain":
        labels = np.where(tied, -1, labels)
    labels = np.where(empty, -1, labels)
    return MajorityVote(
        labels=labels.astype(np.int32),
        probs=probs.astype(np.float32),
        counts=counts.astype(np.int32),
    )


class DawidSkene:
    """Dawid-Skene label model: per-LF confusion matrices and a class prior, fitted by EM.

    The model: the true class ``y ~ Categorical(prior)``; given ``y = c``, LF ``j`` emits
    ``k`` in ``{0..C-1, abstain}`` with probability ``confusion[j, c, k]``, independently of
    the other LFs. Abstaining is one of the outcomes on purpose: a rule that only ever votes
    "spam" carries its information in *whether* it fires, which a model treating abstains as
    missing data cannot see (its confusion matrix would say "spam, whatever the class").

    EM starts from the majority-vote shares and alternates the M-step (maximum a posteriori:
    counts plus ``smoothing`` pseudo-counts in every cell, so no probability is ever 0 and
    nothing is NaN) and the E-step (posteriors ``P(y | votes)``). It stops when the
    penalised log-likelihood per row, which EM never decreases, improves by less than
    ``tol * max(1, |value|)``, or after ``max_iter`` iterations. Rows with a known gold
    label (``fit(L, y)``) keep it as their posterior (semi-supervised EM). Identical rows
    are pooled, so the cost grows with the number of distinct vote rows.

    Attributes (after :meth:`fit`):
        class_prior_: ``[C]`` the class prior (the fixed ``class_prior`` if one was given).
        confusion_: ``[m, C, C + 1]`` ``P(LF j emits k | y = c)``; column ``C`` is abstain.
        accuracies_: ``[m]`` each LF's accuracy on the rows where it votes,
            ``sum_c prior_c conf[j, c, c] / sum_c prior_c (1 - conf[j, c, C])``.
        n_iter_: EM iterations run.
        converged_: whether the tolerance was met before ``max_iter``.
        log_likelihood_: the final mean log-likelihood per row (without the smoothing term).

    Example:
        >>> L = [[0, 0, -1], [1, 1, 1], [0, -1, 0], [1, 0, 1], [-1, -1, -1]]
        >>> model = DawidSkene(2).fit(L)
        >>> probs = model.predict_proba(L)
        >>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1.0))
        ((5, 2), True)
        >>> model.predict(L[:4]).tolist()
        [0, 1, 0, 1]
    """

    def __init__(
        self,
        num_classes: int,
        *,
        max_iter: int = 200,
        tol: float = 1e-7,
        smoothing: float = 1.0,
        class_prior: Any = None,
    ):
        """Configures the model.

        Args:
            num_classes: ``C``.
            max_iter: the EM iteration cap.
            tol: the relative tolerance on the penalised log-likelihood per row.
            smoothing: pseudo-count added to every confusion-matrix cell and class count
                (a symmetric Dirichlet prior); must be positive.
            class_prior: a fixed ``[C]`` class prior (e.g. the class balance of a labelled
                validation split), or ``None`` to learn it. Fixing it helps where the
                unsupervised fit drifts to a degenerate prior (sparse one-sided rules).
        """
        self.num_classes = _check_num_classes(num_classes)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0; got {tol!r}.")
        if not smoothing > 0:
            raise ValueError(f"smoothing must be > 0 (it keeps EM free of NaN); got {smoothing!r}.")
        if class_prior is not None:
            class_prior = np.asarray(class_prior, dtype=np.float64)
            if (
                class_prior.shape != (self.num_classes,)
                or not np.all(class_prior > 0)
                or not np.isclose(class_prior.sum(), 1.0)
            ):
                raise ValueError(
                    f"class_prior must be {self.num_classes} positive probabilities summing "
                    f"to 1; got {class_prior.tolist()!r}."
                )
        self.max_iter = max_iter
        self.tol = float(tol)
        self.smoothing = float(smoothing)
        self.class_prior = class_prior

    def __repr__(self) -> str:
        return (
            f"DawidSkene(num_classes={self.num_classes}, max_iter={self.max_iter}, "
            f"tol={self.tol}, smoothing={self.smoothing}, class_prior="
            f"{None if self.class_prior is None else self.class_prior.tolist()})"
        )

    def fit(self, L: Any, y: Any = None) -> DawidSkene:
        """Fits the confusion matrices (and the prior, unless fixed) to the votes by EM.

        Args:
            L: ``[n, m]`` integer votes, ``-1`` = abstain, ``n >= 1``.
            y: optional ``[n]`` gold labels, ``-1`` where unknown; rows with a gold label
                keep it as their posterior (e.g. ``np.where(split.labelled, split.y, -1)``).

        Returns:
            ``self``.

        Example:
            >>> DawidSkene(2).fit([[0, 0], [1, 1], [1, -1]]).accuracies_.shape
            (2,)
        """
        C, a = self.num_classes, self.smoothing
        L = check_votes(L, C)
        n, m = L.shape
        if n == 0 or m == 0:
            raise ValueError(f"fit needs at least one row and one LF; got L of shape {L.shape}.")
        rows, gold, weights = _patterns(L, y, C)
        outcomes = np.where(rows < 0, C, rows)  # [u, m], abstain -> column C
        known = gold >= 0
        clamp = np.eye(C)[gold[known]]

        q = majority_vote(rows, C).probs.astype(np.float64)  # [u, C] initial posteriors
        q[known] = clamp
        previous = -np.inf
        self.converged_ = False
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            prior, confusion = self._m_step(q, weights, outcomes)
            log_joint = self._log_joint(prior, confusion, outcomes)
            log_norm = _logsumexp(log_joint)
            q = np.exp(log_joint - log_norm[:, None])
            q[known] = clamp
            # Rows with a known label contribute log p(votes, y); the others log p(votes).
            row_ll = np.where(known, log_joint[np.arange(len(gold)), np.maximum(gold, 0)], log_norm)
            log_likelihood = float(weights @ row_ll) / n
            penalty = a * np.log(confusion).sum()
            if self.class_prior is None:
                penalty += a * np.log(prior).sum()
            objective = log_likelihood + penalty / n
            if objective - previous <= self.tol * max(1.0, abs(objective)):
                self.converged_ = True
                break
            previous = objective
        self.n_iter_ = n_iter
        self.log_likelihood_ = log_likelihood
        self.class_prior_ = prior
        self.confusion_ = confusion
        diag = confusion[:, np.arange(C), np.arange(C)]  # [m, C]
        votes = 1.0 - confusion[:, :, C]  # [m, C] P(j votes | y = c)
        self.accuracies_ = (diag @ prior) / (votes @ prior)
        return self

    def _m_step(self, q, weights, outcomes):
        C, a = self.num_classes, self.smoothing
        wq = q * weights[:, None]  # [u, C]
        if self.class_prior is None:
            prior = (wq.sum(axis=0) + a) / (weights.sum() + C * a)
        else:
            prior = self.class_prior
        m = outcomes.shape[1]
        confusion = np.empty((m, C, C + 1))
        eye = np.eye(C + 1)
        for j in range(m):
            counts = wq.T @ eye[outcomes[:, j]] + a  # [C, C + 1]
            confusion[j] = counts / counts.sum(axis=1, keepdims=True)
        return prior, confusion

    def _log_joint(self, prior, confusion, outcomes):
        log_conf = np.log(confusion)
        log_joint = np.broadcast_to(np.log(prior), (outcomes.shape[0], self.num_classes)).copy()
        for j in range(outcomes.shape[1]):
            log_joint += log_conf[j][:, outcomes[:, j]].T
        return log_joint

    def _check_fitted(self, L: Any) -> np.ndarray:
        return _fitted_votes(self, "confusion_", L)

    def predict_proba(self, L: Any) -> np.ndarray:
        """Soft labels ``P(y | votes)``: ``[n, C]`` float32, rows sum to 1.

        Rows where every LF abstains get the class prior: no LF gave evidence there (the
        model's ``P(y | all abstain)`` would rest only on its abstention rates).

        Args:
            L: ``[n, m]`` integer votes with the ``m`` LFs of :meth:`fit`.

        Returns:
            ``[n, C]`` float32 soft labels.

        Example:
            >>> model = DawidSkene(2).fit([[0, 0], [1, 1], [1, -1], [0, 0]])
            >>> bool(np.allclose(model.predict_proba([[-1, -1]])[0], model.class_prior_))
            True
        """
        L = self._check_fitted(L)
        C = self.num_classes
        log_joint = self._log_joint(self.class_prior_, self.confusion_, np.where(L < 0, C, L))
        probs = np.exp(log_joint - _logsumexp(log_joint)[:, None])
        probs[(L < 0).all(axis=1)] = self.class_prior_
        probs = probs.astype(np.float32)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, L: Any) -> np.ndarray:
        """Hard labels: ``[n]`` int32 argmax of :meth:`predict_proba` (lowest class on ties).

        Example:
            >>> DawidSkene(2).fit([[0, 0], [1, 1], [1, -1]]).predict([[1, 1]]).tolist()
            [1]
        """
        return np.argmax(self.predict_proba(L), axis=1).astype(np.int32)


class LabelModel:
    """A label model as users know it from Snorkel: class-conditional LF vote rates, fitted by EM.

    The parameters are, for every LF ``j``, ``mu[j, c, k] = P(LF j votes k | y = c)`` for
    the classes ``k`` (column ``C`` holds the rest, ``P(abstain | y = c)``), and a class
    balance ``P(y)``. The posterior of a row is, as in Snorkel's ``LabelModel``,

        ``P(y = c | votes)  ∝  P(y = c) * prod_{j votes} mu[j, c, vote_j]``:

    only the votes cast are evidence. A rule that votes only "spam" still tells the classes
    apart (``mu[j, spam, spam] > mu[j, ham, spam]``), but the LFs that abstain say nothing:
    with many sparse, overlapping rules (164 patterns, one or two firing per row) the
    abstentions of all the others are neither independent nor informative, and a model
    counting them as evidence (:class:`DawidSkene`) lets them outweigh the votes.

    Fitting is EM-style: start from the majority-vote shares (so the classes keep the
    meaning the rules give them), then alternate ``mu`` = the posterior-weighted vote counts
    plus Dirichlet pseudo-counts, and the posteriors. It stops when no posterior changes by
    more than ``tol`` (``converged_``), or after ``max_iter`` iterations. Deterministic: the
    same votes give the same model (no random start, so no seed; :meth:`predict`'s random
    tie-break takes one). Rows with a gold label (``fit(L, y)``) keep it as their posterior.

    The priors, and why:

    - *Per-LF accuracy*: the Dirichlet mean of ``mu[j]`` is an LF that votes at its observed
      rate, correct with probability ``prior_accuracy`` (0.7, Snorkel's ``prec_init``) and
      otherwise uniformly wrong; its weight is ``prior_strength`` pseudo-votes per class
      (2). A rule that fires three times, alone each time, would otherwise confirm itself to
      accuracy 1; with the prior it stays near the prior until its votes agree with others.
      The pseudo-counts are proportional to the LF's own vote rate, so they never push a
      sparse LF's abstain rate, as a flat smoothing over ``C + 1`` outcomes does.
    - *Class balance*: fixed, not learned: the ``class_balance`` given to :meth:`fit`, or
      uniform (Snorkel's default). Letting EM move it is the unstable direction of these
      models: a class gaining mass makes its rules look more accurate, which gains it more
      mass, until every row is one class (the collapse of :class:`DawidSkene` on SemEval).
      Give the balance of a labelled split where one exists.

    Attributes (after :meth:`fit`):
        class_balance_: ``[C]`` the class balance used.
        mu_: ``[m, C, C + 1]`` ``P(LF j votes k | y = c)``; column ``C`` is abstain.
        accuracies_: ``[m]`` each LF's learned accuracy, the share of its votes that are
            correct: ``sum_c P(c) mu[j, c, c] / sum_c P(c) (1 - mu[j, c, C])``. Compare with
            the empirical accuracy of :func:`~amal_jax.weak.lf_summary`.
        coverage_: ``[m]`` the fraction of the fitted rows where each LF votes.
        n_iter_: iterations run; ``converged_``: whether the tolerance was met;
        max_change_: the largest posterior change of the last iteration.

    Example:
        >>> L = [[0, 0, -1], [1, 1, 1], [0, -1, 0], [1, 0, 1], [-1, -1, -1]]
        >>> model = LabelModel(2).fit(L)
        >>> model.predict(L).tolist(), model.converged_
        ([0, 1, 0, 1, 0], True)
        >>> model.predict_proba(L)[4].tolist()  # no vote: the class balance
        [0.5, 0.5]
        >>> model.predict(L, tie_break="abstain").tolist()
        [0, 1, 0, 1, -1]
    """

    def __init__(
        self,
        num_classes: int,
        *,
        prior_accuracy: float = 0.7,
        prior_strength: float = 2.0,
        max_iter: int = 500,
        tol: float = 1e-6,
    ):
        """Configures the model.

        Args:
            num_classes: ``C``.
            prior_accuracy: the accuracy, in ``(1 / C, 1)``, that the prior gives every LF.
            prior_strength: the prior's weight in pseudo-votes per class, ``> 0``.
            max_iter: the iteration cap, ``>= 1``.
            tol: stop when no posterior changes by more than this, ``>= 0``.
        """
        self.num_classes = _check_num_classes(num_classes)
        C = self.num_classes
        if not (isinstance(prior_accuracy, (int, float)) and 1.0 / C < prior_accuracy < 1.0):
            raise ValueError(
                f"prior_accuracy must be a number in (1/C, 1) = ({1.0 / C:.3g}, 1): an LF "
                f"better than chance; got {prior_accuracy!r}."
            )
        if not (isinstance(prior_strength, (int, float)) and prior_strength > 0):
            raise ValueError(
                f"prior_strength must be a number > 0 (pseudo-votes); got {prior_strength!r}."
            )
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol must be a number >= 0; got {tol!r}.")
        self.prior_accuracy = float(prior_accuracy)
        self.prior_strength = float(prior_strength)
        self.max_iter = max_iter
        self.tol = float(tol)

    def __repr__(self) -> str:
        return (
            f"LabelModel(num_classes={self.num_classes}, prior_accuracy={self.prior_accuracy}, "
            f"prior_strength={self.prior_strength}, max_iter={self.max_iter}, tol={self.tol})"
        )

    def fit(self, L: Any, y: Any = None, *, class_balance: Any = None) -> LabelModel:
        """Fits the per-LF vote rates to the votes (see the class docstring).

        Args:
            L: ``[n, m]`` integer votes, ``-1`` = abstain, ``n >= 1``, ``m >= 1``.
            y: optional ``[n]`` gold labels, ``-1`` where unknown; rows with a gold label
                keep it as their posterior (e.g. ``np.where(split.labelled, split.y, -1)``).
            class_balance: ``[C]`` positive class probabilities summing to 1 (e.g. the label
                shares of a labelled validation split); ``None`` for uniform.

        Returns:
            ``self``.

        Example:
            >>> model = LabelModel(2).fit([[0, 0], [1, 1], [1, -1]], class_balance=[0.4, 0.6])
            >>> model.class_balance_.tolist(), model.accuracies_.shape
            ([0.4, 0.6], (2,))
        """
        C = self.num_classes
        L = check_votes(L, C)
        n, m = L.shape
        if n == 0 or m == 0:
            raise ValueError(f"fit needs at least one row and one LF; got L of shape {L.shape}.")
        balance = _check_class_balance(class_balance, C)
        rows, gold, weights = _patterns(L, y, C)
        outcomes = np.where(rows < 0, C, rows)  # [u, m], abstain -> column C
        known = gold >= 0
        clamp = np.eye(C)[gold[known]]
        alpha = self._pseudo_counts(L, balance)

        q = majority_vote(rows, C).probs.astype(np.float64)  # [u, C] initial posteriors
        q[~(rows >= 0).any(axis=1)] = balance
        q[known] = clamp
        eye = np.eye(C + 1)
        self.converged_ = False
        n_iter, change = 0, np.inf
        while n_iter < self.max_iter:
            n_iter += 1
            wq = q * weights[:, None]  # [u, C]
            mu = np.empty((m, C, C + 1))
            for j in range(m):
                counts = wq.T @ eye[outcomes[:, j]] + alpha[j]  # [C, C + 1]
                mu[j] = counts / counts.sum(axis=1, keepdims=True)
            new_q = _vote_posteriors(np.log(balance), np.log(mu), outcomes)
            new_q[known] = clamp
            change = float(np.abs(new_q - q).max())
            q = new_q
            if change <= self.tol:
                self.converged_ = True
                break
        self.n_iter_ = n_iter
        self.max_change_ = change
        self.class_balance_ = balance
        self.mu_ = mu
        self.coverage_ = (L >= 0).mean(axis=0)
        diag = mu[:, np.arange(C), np.arange(C)]  # [m, C]
        votes = 1.0 - mu[:, :, C]  # [m, C] P(j votes | y = c)
        self.accuracies_ = (diag @ balance) / (votes @ balance)
        return self

    def _pseudo_counts(self, L: np.ndarray, balance: np.ndarray) -> np.ndarray:
        """``[m, C, C + 1]`` Dirichlet pseudo-counts of ``mu`` (see the class docstring)."""
        C, n = self.num_classes, L.shape[0]
        a = self.prior_accuracy
        rate = np.stack([(L == k).mean(axis=0) for k in range(C)], axis=1)  # [m, C] P(votes k)
        # P(votes k | y = c) of an LF voting k at its rate, right with probability a: the
        # balance-weighted average over c is the rate, and P(y = k | votes k) = a.
        share = np.where(np.eye(C, dtype=bool), a, (1.0 - a) / (C - 1)) / balance[:, None]
        mean = np.zeros((L.shape[1], C, C + 1))
        mean[:, :, :C] = rate[:, None, :] * share[None]
        # An LF voting on nearly every row cannot be that accurate for a rare class; scale
        # its vote rates down so that P(abstain | c) stays positive.
        total = mean[:, :, :C].sum(axis=2, keepdims=True)
        mean[:, :, :C] *= np.minimum(1.0, 0.99 / np.maximum(total, 1e-300))
        mean[:, :, C] = 1.0 - mean[:, :, :C].sum(axis=2)
        # prior_strength pseudo-votes per class row: rows = votes / vote rate.
        strength = self.prior_strength / np.maximum(rate.sum(axis=1), 1.0 / n)  # [m]
        # A floor keeps every probability positive (outcomes an LF never emitted).
        return mean * strength[:, None, None] + 1e-6

    def _check_fitted(self, L: Any) -> np.ndarray:
        return _fitted_votes(self, "mu_", L)

    def predict_proba(self, L: Any) -> np.ndarray:
        """Soft labels ``P(y | votes)``: ``[n, C]`` float32, rows sum to 1.

        Rows where every LF abstains get the class balance.

        Args:
            L: ``[n, m]`` integer votes with the ``m`` LFs of :meth:`fit`.

        Returns:
            ``[n, C]`` float32 soft labels.

        Example:
            >>> model = LabelModel(2).fit([[0, 0], [1, 1], [1, -1]], class_balance=[0.3, 0.7])
            >>> [round(float(p), 3) for p in model.predict_proba([[-1, -1]])[0]]
            [0.3, 0.7]
        """
        L = self._check_fitted(L)
        C = self.num_classes
        probs = _vote_posteriors(
            np.log(self.class_balance_), np.log(self.mu_), np.where(L < 0, C, L)
        ).astype(np.float32)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(
        self, L: Any, *, tie_break: str = "lowest", seed: int = 0, tol: float = 1e-5
    ) -> np.ndarray:
        """Hard labels: ``[n]`` int32 argmax of :meth:`predict_proba`.

        Args:
            L: ``[n, m]`` integer votes.
            tie_break: for a row whose top classes are within ``tol`` of each other (every
                row without votes, under a uniform balance): ``"lowest"`` (the lowest tied
                class), ``"random"`` (one drawn with ``numpy.random.default_rng(seed)``) or
                ``"abstain"`` (``-1``, Snorkel's default ``tie_break_policy``).
            seed: the seed of ``"random"``.
            tol: how close two posteriors must be to tie.

        Returns:
            ``[n]`` int32 classes, ``-1`` where ``"abstain"`` left a tie.

        Example:
            >>> model = LabelModel(2).fit([[0, 0], [1, 1], [1, -1]])
            >>> model.predict([[1, 1], [-1, -1]], tie_break="abstain").tolist()
            [1, -1]
        """
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}; got {tie_break!r}.")
        probs = self.predict_proba(L)
        top = probs >= probs.max(axis=1, keepdims=True) - tol
        labels = np.argmax(top, axis=1)
        tied = top.sum(axis=1) > 1
        if tie_break == "random":
            keys = np.where(top, np.random.default_rng(seed).random(top.shape), -1.0)
            labels = np.where(tied, np.argmax(keys, axis=1), labels)
        elif tie_break == "abstain":
            labels = np.where(tied, -1, labels)
        return labels.astype(np.int32)


def _check_class_balance(class_balance: Any, num_classes: int) -> np.ndarray:
    if class_balance is None:
        return np.full(num_classes, 1.0 / num_classes)
    balance = np.asarray(class_balance, dtype=np.float64)
    if (
        balance.shape != (num_classes,)
        or not np.all(balance > 0)
        or not np.isclose(balance.sum(), 1.0)
    ):
        raise ValueError(
            f"class_balance must be {num_classes} positive probabilities summing to 1; got "
            f"{balance.tolist()!r}."
        )
    return balance / balance.sum()


def _vote_posteriors(log_balance, log_mu, outcomes) -> np.ndarray:
    """``[u, C]`` posteriors from the votes only (abstains, column ``C``, carry nothing)."""
    C = log_mu.shape[1]
    log_joint = np.broadcast_to(log_balance, (outcomes.shape[0], C)).copy()
    for j in range(outcomes.shape[1]):
        votes = outcomes[:, j] < C
        log_joint[votes] += log_mu[j][:, outcomes[votes, j]].T
    return np.exp(log_joint - _logsumexp(log_joint)[:, None])


def check_gold(y: Any, n: int, num_classes: int) -> np.ndarray:
    """Checks gold labels ``y`` (``[n]`` integers in ``[0, num_classes)``, -1 for unknown);
    returns them as int64. ``ValueError`` names the first problem."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match L; got {y.shape}.")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer classes (-1 = unknown); got dtype {y.dtype}.")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < -1) | (y >= num_classes))
    if bad.size:
        raise ValueError(
            f"y[{bad[0]}] = {y[bad[0]]} is outside [-1, {num_classes}) (-1 = unknown gold)."
        )
    return y


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))
