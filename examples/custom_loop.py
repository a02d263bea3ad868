"""Your own training loop around ``amal_jax.step``: a Flax Linen model, an optax optimizer.

The setting is AMAL's: a classifier learns from noisy labels and from an auxiliary target
(here a teacher's logits), and a small clean validation set decides, per training example,
how much each of the two losses should count.

- Synthetic data (numpy only): 10 classes of Gaussian clusters in 20 dimensions, split into
  train / clean validation / test; 40% of the *training* labels are flipped to another class.
- A teacher MLP is trained briefly on the noisy labels; its logits are the auxiliary target.
- The student's loss matrix is ``[B, 2]``: column 0 the cross-entropy to the noisy label,
  column 1 the distillation loss to the teacher. A per-example table (``amal_jax.table``)
  holds the two weights of every training example and is meta-learned by ``amal_jax.step``.
- A fixed-mix baseline trains the same model from the same start with the table's initial
  weights frozen (``amal_jax.train_update`` with a ``global_weights`` mixer).

At the end the script prints the test accuracies (teacher, AMAL, fixed mix, and a model
trained on the clean validation set alone, since AMAL sees those labels too) and the mean
learned weights on the training rows whose label was flipped versus those whose label is
clean.

Run::

    python examples/custom_loop.py           # the full run: seconds on 2 CPU cores
    python examples/custom_loop.py --quick   # a smoke run: small data, few epochs
"""

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import amal_jax

NUM_CLASSES = 10
NUM_FEATURES = 20
NOISE_RATE = 0.4
# Column 0: cross-entropy to the noisy label; column 1: distillation to the teacher.
INIT_WEIGHTS = (0.5, 0.5)


class MLP(nn.Module):
    """A small ReLU MLP classifier: ``[B, F]`` features -> ``[B, C]`` logits."""

    hidden: Sequence[int]
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class Data(NamedTuple):
    """The three splits; only the training labels are noisy.

    Fields:
        x_train: ``[N, F] float32``.
        y_train: ``[N] int32`` noisy labels, the only labels training sees.
        flipped: ``[N] bool``, whether the noisy label differs from the true one (for the
            report only; training never reads it).
        x_val / y_val: ``[V, F]`` / ``[V]``, clean labels.
        x_test / y_test: ``[T, F]`` / ``[T]``, clean labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    flipped: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_data(seed: int, num_train: int, num_val: int, num_test: int) -> Data:
    """Gaussian clusters (two per class, so a linear model is not enough) with label noise.

    A flipped label is drawn uniformly from the other ``C - 1`` classes (symmetric noise);
    exactly ``round(NOISE_RATE * num_train)`` training rows are flipped.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.9, size=(NUM_CLASSES, 2, NUM_FEATURES))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, NUM_CLASSES, n)
        cluster = rng.integers(0, 2, n)
        x = centres[y, cluster] + rng.normal(size=(n, NUM_FEATURES))
        return x.astype(np.float32), y.astype(np.int32)

    x_train, y_clean = sample(num_train)
    x_val, y_val = sample(num_val)
    x_test, y_test = sample(num_test)
    flipped = np.zeros(num_train, bool)
    flipped[rng.permutation(num_train)[: round(NOISE_RATE * num_train)]] = True
    offset = rng.integers(1, NUM_CLASSES, num_train)
    y_train = np.where(flipped, (y_clean + offset) % NUM_CLASSES, y_clean).astype(np.int32)
    return Data(x_train, y_train, flipped, x_val, y_val, x_test, y_test)


def minibatches(rng: np.random.Generator, num: int, batch_size: int) -> Iterator[np.ndarray]:
    """Shuffled example indices, one ``[batch_size]`` array per step.

    The last partial batch is dropped: every batch then has one shape, so each jitted
    function compiles once (the rows left out differ from epoch to epoch).
    """
    perm = rng.permutation(num)
    for start in range(0, num - batch_size + 1, batch_size):
        yield perm[start : start + batch_size]


def accuracy(apply_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose arg-max logit is ``y``."""
    return float(jnp.mean(jnp.argmax(apply_fn(params, x), axis=-1) == y))


def fit_cross_entropy(
    model: MLP,
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    seed: int,
) -> Any:
    """A plain optax loop on the mean cross-entropy to ``y``; returns the trained params."""

    @jax.jit
    def update(params, opt_state, x, y):
        def loss(p):
            return jnp.mean(amal_jax.cross_entropy(model.apply({"params": p}, x), y))

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in minibatches(rng, len(y), batch_size):
            params, opt_state = update(params, opt_state, x[idx], y[idx])
    return params


def run_epochs(
    name: str,
    update: Callable[[amal_jax.AmalState, dict], tuple[amal_jax.AmalState, dict]],
    state: amal_jax.AmalState,
    train_set: dict[str, np.ndarray],
    evaluate: Callable[[Any], tuple[float, float]],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> amal_jax.AmalState:
    """The user's loop: epochs of shuffled minibatches through ``update``, one line per epoch.

    ``update(state, batch) -> (state, metrics)`` is a jitted AMAL step or train update.
    """
    print(f"\n== {name} ==")
    print("epoch  train_loss  val_loss  val_acc  w_ce   w_kd   meta_updates")
    rng = np.random.default_rng(seed)
    num = len(train_set["id"])
    for epoch in range(1, epochs + 1):
        history = []
        for idx in minibatches(rng, num, batch_size):
            state, metrics = update(state, {k: v[idx] for k, v in train_set.items()})
            history.append(metrics)
        # One transfer per epoch, not per step: the loop above never waits for the device.
        history = jax.device_get(history)
        loss = np.mean([m["loss"] for m in history])
        w_ce, w_kd = np.mean([m["weight_mean"] for m in history], axis=0)
        meta = sum(int(m.get("meta_updated", False)) for m in history)
        val_loss, val_acc = evaluate(state.params)
        print(
            f"{epoch:5d}  {loss:10.4f}  {val_loss:8.4f}  {val_acc:7.3f}  {w_ce:5.3f}  "
            f"{w_kd:5.3f}  {meta:12d}"
        )
    return state


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains a teacher, an AMAL student and the references; prints and returns the results.

    Args:
        argv: command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        A dict with the test accuracies ``teacher_test_accuracy``, ``amal_test_accuracy``,
        ``baseline_test_accuracy`` (fixed mix) and ``val_only_test_accuracy`` (the clean
        validation set alone); ``ce_weight_clean`` / ``ce_weight_flipped`` and
        ``kd_weight_clean`` / ``kd_weight_flipped``, the mean learned weights on the
        training rows with clean / flipped labels; ``num_classes`` and ``seconds``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="student epochs (default 30; 4 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds data, noise and models")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs (smoke run)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    if args.quick:
        num_train, num_val, num_test, default_epochs = 640, 200, 500, 4
    else:
        num_train, num_val, num_test, default_epochs = 4000, 500, 4000, 30
    epochs = default_epochs if args.epochs is None else args.epochs
    if epochs < 1:
        parser.error("--epochs must be at least 1")
    batch_size = 64
    steps_per_epoch = num_train // batch_size

    data = make_data(args.seed, num_train, num_val, num_test)
    print(
        f"data: {num_train} train ({data.flipped.mean():.0%} labels flipped), {num_val} clean "
        f"val, {num_test} test; {NUM_CLASSES} classes, {NUM_FEATURES} features"
    )
    key = jax.random.key(args.seed)
    teacher_key, student_key, amal_key = jax.random.split(key, 3)

    # --- Teacher: its logits on the training set become the auxiliary target. ---
    # Trained for a few hundred steps only: by then it has picked up the clusters but not yet
    # memorised the flipped labels, so its soft predictions are a useful second opinion.
    teacher = MLP(hidden=(32,))
    teacher_steps = 300
    teacher_params = fit_cross_entropy(
        teacher,
        teacher.init(teacher_key, data.x_train[:1])["params"],
        data.x_train,
        data.y_train,
        optimizer=optax.adam(3e-3),
        epochs=max(1, teacher_steps // steps_per_epoch),
        batch_size=batch_size,
        seed=args.seed,
    )

    def teacher_apply(p, x):
        return teacher.apply({"params": p}, x)

    teacher_logits = np.asarray(jax.jit(teacher_apply)(teacher_params, data.x_train))
    teacher_acc = accuracy(teacher_apply, teacher_params, data.x_test, data.y_test)
    print(f"teacher: trained briefly on the noisy labels, test accuracy {teacher_acc:.3f}")

    # --- Student: a Flax Linen model, seen by amal_jax as apply_fn(params, x). ---
    student = MLP(hidden=(64, 64))

    def apply_fn(params, x):
        return student.apply({"params": params}, x)

    def loss_fn(params, batch):
        logits = apply_fn(params, batch["x"])
        return amal_jax.stack_losses(
            amal_jax.cross_entropy(logits, batch["label"]),
            amal_jax.kd_loss(logits, batch["teacher_logits"]),
        )

    def val_loss_fn(params, batch):
        return jnp.mean(amal_jax.cross_entropy(apply_fn(params, batch["x"]), batch["label"]))

    train_set = {
        "x": data.x_train,
        "label": data.y_train,
        "teacher_logits": teacher_logits,
        # The table mixer reads each example's row of weights through these ids.
        "id": np.arange(num_train, dtype=np.int32),
    }
    # On the device once: every AMAL step reads the whole clean validation set.
    val_batch = jax.device_put({"x": data.x_val, "label": data.y_val})

    @jax.jit
    def val_metrics(params, batch):
        logits = apply_fn(params, batch["x"])
        correct = jnp.argmax(logits, axis=-1) == batch["label"]
        return val_loss_fn(params, batch), jnp.mean(correct)

    def evaluate(params):
        return tuple(float(v) for v in val_metrics(params, val_batch))

    def init_student():
        # One init key for every student, so they differ only in what they learn from.
        return student.init(student_key, data.x_train[:1])["params"]

    optimizer = optax.sgd(0.05, momentum=0.9)
    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optimizer,
        mixer=amal_jax.table(num_train, 2, init=INIT_WEIGHTS),
        # The hypergradient is rescaled to mean |G| = 1 per batch, so this learning rate is
        # roughly how far one meta update moves a weight.
        meta_optimizer=optax.sgd(0.1),
        normalize_hypergradient=True,
        # Let the model learn something first: the earliest hypergradients are mostly noise.
        warmup_steps=steps_per_epoch,
        meta_every=1,
    )
    # `init` keeps the arrays it is given and the donating jitted step deletes them, so
    # each state gets its own fresh params and key.
    amal_state = amal_jax.init(config, init_student(), key=jax.random.fold_in(amal_key, 0))
    # Donating the state lets XLA update the params and the [N, 2] table in place.
    amal_step = jax.jit(amal_jax.step, donate_argnums=0)
    amal_state = run_epochs(
        f"AMAL student (table mixer, weights start at {INIT_WEIGHTS})",
        lambda state, batch: amal_step(state, batch, val_batch),
        amal_state,
        train_set,
        evaluate,
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
    )
    print("(AMAL's meta updates see the validation set: its val columns are optimistic)")

    # --- Baseline: the same start and weights, frozen (train_update never meta-updates). ---
    baseline_config = config.replace(mixer=amal_jax.global_weights(2, init=INIT_WEIGHTS))
    baseline_state = amal_jax.init(
        baseline_config, init_student(), key=jax.random.fold_in(amal_key, 1)
    )
    baseline_state = run_epochs(
        f"fixed-mix baseline (weights {INIT_WEIGHTS})",
        jax.jit(amal_jax.train_update, donate_argnums=0),
        baseline_state,
        train_set,
        evaluate,
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
    )

    # --- Reference: AMAL learns from the clean validation labels too; are they enough alone? ---
    val_only_params = fit_cross_entropy(
        student,
        init_student(),
        data.x_val,
        data.y_val,
        optimizer=optimizer,
        # As many steps as the students took, over the small clean set.
        epochs=max(1, epochs * steps_per_epoch // max(1, num_val // batch_size)),
        batch_size=batch_size,
        seed=args.seed,
    )

    def test_accuracy(params):
        return accuracy(apply_fn, params, data.x_test, data.y_test)

    table = np.asarray(amal_state.mix_params)  # [N, 2]: the learned weights of every example
    flipped = data.flipped
    results = {
        "num_classes": NUM_CLASSES,
        "teacher_test_accuracy": teacher_acc,
        "amal_test_accuracy": test_accuracy(amal_state.params),
        "baseline_test_accuracy": test_accuracy(baseline_state.params),
        "val_only_test_accuracy": test_accuracy(val_only_params),
        "ce_weight_clean": float(table[~flipped, 0].mean()),
        "ce_weight_flipped": float(table[flipped, 0].mean()),
        "kd_weight_clean": float(table[~flipped, 1].mean()),
        "kd_weight_flipped": float(table[flipped, 1].mean()),
    }

    print(f"\n== results (seed {args.seed}, {epochs} epochs, {num_test} test points) ==")
    print("test accuracy:")
    for name, field in (
        ("teacher (noisy labels, brief)", "teacher"),
        (f"student, fixed mix {INIT_WEIGHTS}", "baseline"),
        ("student, AMAL", "amal"),
        ("student, clean validation labels only", "val_only"),
    ):
        print(f"  {name:40s}{results[field + '_test_accuracy']:.3f}")
    diff = results["amal_test_accuracy"] - results["baseline_test_accuracy"]
    verdict = "AMAL ahead" if diff > 0 else "AMAL behind" if diff < 0 else "a tie"
    print(f"AMAL - fixed mix: {diff:+.3f} ({verdict}, one seed)")
    print("learned weights on the training rows (means):")
    print(f"  {'':14s}{'rows':>6s}  {'w_ce':>6s}  {'w_kd':>6s}")
    for name, rows in (("clean label", ~flipped), ("flipped label", flipped)):
        w_ce, w_kd = table[rows].mean(axis=0)
        print(f"  {name:14s}{rows.sum():6d}  {w_ce:6.3f}  {w_kd:6.3f}")
    results["seconds"] = time.perf_counter() - start
    print(f"total time {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
