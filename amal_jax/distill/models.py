"""The Flax Linen models shared by the teachers and the benchmarks: one MLP, one small CNN.

:class:`MLP` is the students' network of the accuracy benchmarks, the MLP of the speed
benchmark and the MLP teacher; :class:`TeacherCNN` is the image teacher. Layer names fix
the parameter tree and, through Flax's per-name key derivation, the initial values: the
teachers name their layers ``hidden_<i>`` / ``logits`` (``TEACHER_NAMES``), the benchmarks
keep Flax's ``Dense_<i>`` and a ``head`` (the default, which a head-only look-ahead masks by).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["BENCHMARK_NAMES", "MLP", "TEACHER_NAMES", "TeacherCNN", "dense_layers"]

#: ``(hidden layer name pattern, head name)`` of the benchmark networks.
BENCHMARK_NAMES = ("Dense_{}", "head")
#: ``(hidden layer name pattern, head name)`` of the teachers (their logit cache depends on it).
TEACHER_NAMES = ("hidden_{}", "logits")

# The CNN default: two 3x3 convolutions, each halving the map (stride 2).
DEFAULT_CONV = (32, 64)


def dense_layers(
    x: jax.Array,
    hidden: Sequence[int],
    num_classes: int,
    *,
    dropout: float,
    train: bool,
    names: tuple[str, str],
) -> jax.Array:
    """Dense + ReLU (+ dropout in training) per width of ``hidden``, then a Dense head.

    Call it inside a ``@nn.compact`` method: the layers belong to the calling module.
    ``names``: ``(pattern, head)``, the hidden layers are named ``pattern.format(i)``.
    """
    pattern, head = names
    for i, width in enumerate(hidden):
        x = nn.relu(nn.Dense(width, name=pattern.format(i))(x))
        if dropout > 0:
            x = nn.Dropout(dropout, deterministic=not train)(x)
    return nn.Dense(num_classes, name=head)(x)


class MLP(nn.Module):
    """``[B, D] -> [B, C]`` logits: Dense + ReLU (+ dropout in training) per hidden layer.

    Fields:
        num_classes: ``C``.
        hidden: hidden layer widths; ``()`` is a linear model.
        dropout: dropout rate after each hidden layer during training (``train=True``).
        names: ``(hidden layer name pattern, head name)``; :data:`BENCHMARK_NAMES` (default)
            or :data:`TEACHER_NAMES`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = MLP(num_classes=3, hidden=(4,))
        >>> variables = model.init(jax.random.key(0), jnp.zeros((2, 5)))
        >>> sorted(variables["params"]), model.apply(variables, jnp.zeros((2, 5))).shape
        (['Dense_0', 'head'], (2, 3))
    """

    num_classes: int
    hidden: Sequence[int] = ()
    dropout: float = 0.0
    names: tuple[str, str] = BENCHMARK_NAMES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return dense_layers(
            x, self.hidden, self.num_classes, dropout=self.dropout, train=train, names=self.names
        )


class TeacherCNN(nn.Module):
    """``[B, D] -> [B, C]`` logits of a small CNN over ``[B, H, W, C_in]`` images.

    Each row is reshaped to ``image_shape`` (channels last). Per width in ``conv``: a 3x3
    convolution with SAME padding and ReLU that halves the map (stride 2) while it is at
    least 2x2; then the map is flattened and passed through ``hidden`` Dense + ReLU (+
    dropout in training) layers and a Dense head (:func:`dense_layers`, teacher names).
    Strided convolutions rather than max pooling: the max-pool gradient is about 10x slower
    than a strided convolution on XLA's CPU backend, and these teachers are meant to train
    in seconds there.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = TeacherCNN(num_classes=10, image_shape=(8, 8, 1), conv=(4,), hidden=())
        >>> variables = model.init(jax.random.key(0), jnp.zeros((2, 64)))
        >>> model.apply(variables, jnp.zeros((2, 64))).shape
        (2, 10)
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    conv: Sequence[int] = DEFAULT_CONV
    hidden: Sequence[int] = (128,)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], *self.image_shape))
        for i, width in enumerate(self.conv):
            stride = 2 if x.shape[1] >= 2 and x.shape[2] >= 2 else 1
            conv = nn.Conv(width, (3, 3), strides=stride, padding="SAME", name=f"conv_{i}")
            x = nn.relu(conv(x))
        x = x.reshape((x.shape[0], -1))
        return dense_layers(
            x,
            self.hidden,
            self.num_classes,
            dropout=self.dropout,
            train=train,
            names=TEACHER_NAMES,
        )
