"""A Flax NNX model with BatchNorm and Dropout, trained through ``jax.jit(amal_jax.step)``.

The setting: every training example carries two noisy labels from two independent
annotators, A wrong on 20% of the rows and B on 50%, and a small clean validation set
decides, per example, how much each of the two cross-entropies should count.

- Synthetic data (numpy only): 10 classes of Gaussian clusters (two per class) in 20
  dimensions, split into train / clean validation / test.
- The model is an ``nnx.Module``: Linear -> BatchNorm -> ReLU -> Dropout, twice, then a
  Linear head. ``amal_jax.nnx.split_model`` splits it into params (the ``nnx.Param``
  leaves) and model state (BatchNorm statistics, Dropout's random stream);
  ``amal_jax.nnx.loss_functions`` turns ``losses(model, batch)`` and ``val_loss(model,
  batch)`` into the ``stateful=True`` loss functions of ``amal_jax.AmalConfig``.
- The loss matrix is ``[B, 2]``: the cross-entropy to annotator A's label and to annotator
  B's. A per-example table (``amal_jax.table``) holds the two weights of every training
  example and is meta-learned by ``amal_jax.step``.
- A fixed-mix baseline trains the same model from the same start with the weights frozen
  at ``(0.5, 0.5)`` (``amal_jax.train_update`` with a ``global_weights`` mixer).

At the end the script prints the test accuracies of AMAL and of the fixed mix (evaluated
with ``amal_jax.nnx.merge``: eval mode, running statistics, no dropout) and the mean learned
weight of each label on the rows where that label is right versus wrong.

Run::

    python examples/nnx_batchnorm.py           # the full run: about 20 seconds on 2 CPU cores
    python examples/nnx_batchnorm.py --quick   # a smoke run: small data, few epochs
"""

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import amal_jax
import amal_jax.nnx as amal_nnx

NUM_CLASSES = 10
NUM_FEATURES = 20
NOISE_RATES = (0.2, 0.5)  # annotator A, annotator B (independent noise)
INIT_WEIGHTS = (0.5, 0.5)


class MLP(nnx.Module):
    """``[B, F]`` features -> ``[B, C]`` logits, with BatchNorm and Dropout in each block."""

    def __init__(self, hidden: Sequence[int], *, dropout: float, rngs: nnx.Rngs):
        sizes = [NUM_FEATURES, *hidden]
        self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairwise(sizes)])
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs) for b in hidden])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(sizes[-1], NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = self.dropout(nnx.relu(norm(linear(x))))
        return self.head(x)


class Data(NamedTuple):
    """The three splits; only the training labels are noisy.

    Fields:
        x_train: ``[N, F] float32``.
        y_a / y_b: ``[N] int32``, the two annotators' labels (the only labels training sees).
        right_a / right_b: ``[N] bool``, whether each label is the true one (for the report
            only; training never reads them).
        x_val / y_val, x_test / y_test: clean labels.
    """

    x_train: np.ndarray
    y_a: np.ndarray
    y_b: np.ndarray
    right_a: np.ndarray
    right_b: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_data(seed: int, num_train: int, num_val: int, num_test: int) -> Data:
    """Gaussian clusters with two independently noisy training labels (symmetric noise: a
    wrong label is drawn uniformly from the other classes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.9, size=(NUM_CLASSES, 2, NUM_FEATURES))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, NUM_CLASSES, n)
        x = centres[y, rng.integers(0, 2, n)] + rng.normal(size=(n, NUM_FEATURES))
        return x.astype(np.float32), y.astype(np.int32)

    def annotate(y: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
        wrong = np.zeros(len(y), bool)
        wrong[rng.permutation(len(y))[: round(rate * len(y))]] = True
        offset = rng.integers(1, NUM_CLASSES, len(y))
        return np.where(wrong, (y + offset) % NUM_CLASSES, y).astype(np.int32), ~wrong

    x_train, y_true = sample(num_train)
    x_val, y_val = sample(num_val)
    x_test, y_test = sample(num_test)
    (y_a, right_a), (y_b, right_b) = (annotate(y_true, rate) for rate in NOISE_RATES)
    return Data(x_train, y_a, y_b, right_a, right_b, x_val, y_val, x_test, y_test)


def minibatches(rng: np.random.Generator, num: int, batch_size: int) -> Iterator[np.ndarray]:
    """Shuffled indices, one ``[batch_size]`` array per step (the last partial batch dropped,
    so that every batch has one shape and the jitted step compiles once)."""
    perm = rng.permutation(num)
    for start in range(0, num - batch_size + 1, batch_size):
        yield perm[start : start + batch_size]


def losses(model: MLP, batch: dict) -> jax.Array:
    """``[B, 2]``: cross-entropy to annotator A's label, to annotator B's (train mode)."""
    logits = model(batch["x"])
    return amal_jax.stack_losses(
        amal_jax.cross_entropy(logits, batch["y_a"]),
        amal_jax.cross_entropy(logits, batch["y_b"]),
    )


def val_loss(model: MLP, batch: dict) -> jax.Array:
    """Mean cross-entropy to the clean labels (eval mode)."""
    return jnp.mean(amal_jax.cross_entropy(model(batch["x"]), batch["y"]))


def run_epochs(
    name: str,
    update: Callable[[amal_jax.AmalState, dict], tuple[amal_jax.AmalState, dict]],
    state: amal_jax.AmalState,
    train_set: dict[str, np.ndarray],
    evaluate: Callable[[amal_jax.AmalState], float],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> amal_jax.AmalState:
    """Epochs of shuffled minibatches through ``update``, one line per epoch."""
    print(f"\n== {name} ==")
    print("epoch  train_loss  val_acc  w_a    w_b    meta_updates")
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        history = []
        for idx in minibatches(rng, len(train_set["id"]), batch_size):
            state, metrics = update(state, {k: v[idx] for k, v in train_set.items()})
            history.append(metrics)
        history = jax.device_get(history)  # one transfer per epoch
        loss = np.mean([m["loss"] for m in history])
        w_a, w_b = np.mean([m["weight_mean"] for m in history], axis=0)
        meta = sum(int(m["meta_updated"]) for m in history)
        print(
            f"{epoch:5d}  {loss:10.4f}  {evaluate(state):7.3f}  {w_a:5.3f}  {w_b:5.3f}  {meta:12d}"
        )
    return state


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains an AMAL model and a fixed-mix baseline; prints and returns the results.

    Args:
        argv: command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        A dict with ``amal_test_accuracy``, ``baseline_test_accuracy``, ``num_classes``,
        ``weight_a_right`` / ``weight_a_wrong`` / ``weight_b_right`` / ``weight_b_wrong``
        (the mean learned weight of each label on the rows where it is right / wrong),
        ``batch_stats_finite`` (the trained BatchNorm statistics are finite) and ``seconds``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs (default 25; 4 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds data, model and dropout")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs (smoke run)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.quick:
        num_train, num_val, num_test, default_epochs, hidden = 640, 200, 500, 4, (32,)
    else:
        num_train, num_val, num_test, default_epochs, hidden = 4000, 500, 4000, 25, (64, 64)
    epochs = default_epochs if args.epochs is None else args.epochs
    if epochs < 1:
        parser.error("--epochs must be at least 1")
    batch_size = 64
    steps_per_epoch = num_train // batch_size

    data = make_data(args.seed, num_train, num_val, num_test)
    print(
        f"data: {num_train} train (label A wrong on {NOISE_RATES[0]:.0%} of the rows, label B "
        f"on {NOISE_RATES[1]:.0%}), "
        f"{num_val} clean val, {num_test} test; {NUM_CLASSES} classes"
    )

    # The module, split once: its structure, its nnx.Param leaves, everything else.
    model = MLP(hidden, dropout=0.2, rngs=nnx.Rngs(args.seed))
    graphdef, params, model_state = amal_nnx.split_model(model)
    loss_fn, val_loss_fn = amal_nnx.loss_functions(graphdef, losses, val_loss)

    train_set = {
        "x": data.x_train,
        "y_a": data.y_a,
        "y_b": data.y_b,
        "id": np.arange(num_train, dtype=np.int32),  # the table's row of each example
    }
    val_batch = jax.device_put({"x": data.x_val, "y": data.y_val})

    @jax.jit
    def predict(params, model_state, x):
        # merge gives the module in eval mode: running statistics, no dropout.
        return amal_nnx.merge(graphdef, params, model_state)(x)

    def accuracy(state: amal_jax.AmalState, x: np.ndarray, y: np.ndarray) -> float:
        logits = predict(state.params, state.model_state, x)
        return float(jnp.mean(jnp.argmax(logits, axis=-1) == y))

    config = amal_jax.AmalConfig(
        loss_fn=loss_fn,
        val_loss_fn=val_loss_fn,
        optimizer=optax.sgd(0.05, momentum=0.9),
        mixer=amal_jax.table(num_train, 2, init=INIT_WEIGHTS),
        meta_optimizer=optax.sgd(0.1),  # with normalised hypergradients: ~0.1 per update
        normalize_hypergradient=True,
        warmup_steps=steps_per_epoch,  # the earliest hypergradients are mostly noise
        stateful=True,  # loss_fn(params, batch, model_state, key): BatchNorm and Dropout
    )
    key = jax.random.key(args.seed)
    # init copies params and model_state, so both runs can start from the same arrays.
    amal_state = amal_jax.init(
        config, params, key=jax.random.fold_in(key, 0), model_state=model_state
    )
    amal_step = jax.jit(amal_jax.step, donate_argnums=0)
    amal_state = run_epochs(
        f"AMAL (table mixer, weights start at {INIT_WEIGHTS})",
        lambda state, batch: amal_step(state, batch, val_batch),
        amal_state,
        train_set,
        lambda state: accuracy(state, data.x_val, data.y_val),
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
    )

    baseline_config = config.replace(mixer=amal_jax.global_weights(2, init=INIT_WEIGHTS))
    baseline_state = amal_jax.init(
        baseline_config, params, key=jax.random.fold_in(key, 1), model_state=model_state
    )
    baseline_state = run_epochs(
        f"fixed-mix baseline (weights {INIT_WEIGHTS})",
        jax.jit(amal_jax.train_update, donate_argnums=0),
        baseline_state,
        train_set,
        lambda state: accuracy(state, data.x_val, data.y_val),
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
    )

    table = np.asarray(amal_state.mix_params)  # [N, 2]
    stats = [
        leaf
        for leaf in jax.tree.leaves(amal_state.model_state)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    results = {
        "num_classes": NUM_CLASSES,
        "amal_test_accuracy": accuracy(amal_state, data.x_test, data.y_test),
        "baseline_test_accuracy": accuracy(baseline_state, data.x_test, data.y_test),
        "weight_a_right": float(table[data.right_a, 0].mean()),
        "weight_a_wrong": float(table[~data.right_a, 0].mean()),
        "weight_b_right": float(table[data.right_b, 1].mean()),
        "weight_b_wrong": float(table[~data.right_b, 1].mean()),
        "batch_stats_finite": bool(all(np.isfinite(np.asarray(s)).all() for s in stats)),
    }
    print(f"\n== results (seed {args.seed}, {epochs} epochs, {num_test} test points) ==")
    print("test accuracy:")
    for name, field in ((f"fixed mix {INIT_WEIGHTS}", "baseline"), ("AMAL", "amal")):
        print(f"  {name:24s}{results[field + '_test_accuracy']:.3f}")
    diff = round(results["amal_test_accuracy"] - results["baseline_test_accuracy"], 3)
    verdict = "AMAL ahead" if diff > 0 else "AMAL behind" if diff < 0 else "a tie"
    print(f"AMAL - fixed mix: {diff:+.3f} ({verdict}, one seed)")
    print("mean learned weight of each label, on the rows where it is right / wrong:")
    for name in ("a", "b"):
        right, wrong = results[f"weight_{name}_right"], results[f"weight_{name}_wrong"]
        print(f"  label {name.upper()}: {right:.3f} / {wrong:.3f}")
    results["seconds"] = time.perf_counter() - start
    print(f"total time {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
