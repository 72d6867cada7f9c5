"""MLP image classifiers over prepared datasets, and the family they are drawn from."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import SPLITS, Batch, Params, TaskData
from lopt.tasks.mup import PARAMETRIZATIONS, mlp_update_scales
from lopt.tasks.precision import cast_floating, check_precision, to_float32

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
}


def draw_examples(data: TaskData, key: jax.Array, split: str, size: int) -> Batch:
    """``size`` examples of ``data[split] = (x, y)`` drawn uniformly with replacement."""
    x, y = data[split]
    idx = jax.random.randint(key, (size,), 0, x.shape[0])
    return x[idx], y[idx]


def exact_metrics(
    logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, chunk_size: int
) -> dict[str, jax.Array]:
    """Mean cross-entropy and top-1 accuracy of ``logits_fn`` over every example of ``(x, y)``.

    Exact, never a sample (a random draw of the split made reported losses noisy, and
    best-so-far losses a minimum over noise). The ``n`` rows run in
    ``ceil(n / chunk_size)`` equal chunks under ``lax.map`` so memory is bounded by
    ``chunk_size`` rows; the last chunk is padded and its padding masked out. Labels may
    carry trailing axes (``[n, L]`` targets of a language model): every label counts once.
    """
    n = x.shape[0]
    num_chunks = -(-n // chunk_size)
    if num_chunks == 1:
        return classification_metrics(logits_fn(x), y)
    size = -(-n // num_chunks)  # equal chunks: at most num_chunks - 1 padded rows
    pad = num_chunks * size - n

    def chunked(a: jax.Array) -> jax.Array:
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(num_chunks, size, *a.shape[1:])

    mask = chunked(jnp.ones(n, bool))  # padding rows come out False

    def sums(chunk: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        xc, yc, mc = chunk
        logp = jax.nn.log_softmax(logits_fn(xc))
        nll = -jnp.take_along_axis(logp, yc[..., None], axis=-1)[..., 0]
        correct = jnp.argmax(logp, -1) == yc
        m = mc.reshape(mc.shape + (1,) * (yc.ndim - 1))
        return jnp.sum(jnp.where(m, nll, 0.0)), jnp.sum(jnp.where(m, correct, False))

    nll_sum, num_correct = jax.lax.map(sums, (chunked(x), chunked(y), mask))
    count = n * math.prod(y.shape[1:])
    return {"loss": jnp.sum(nll_sum) / count, "accuracy": jnp.sum(num_correct) / count}


def softmax_xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (nats) of integer labels ``y`` over all leading axes."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def classification_metrics(logits: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """``{"loss": mean cross-entropy, "accuracy": mean top-1 accuracy}``."""
    return {"loss": softmax_xent(logits, y), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


@dataclasses.dataclass(frozen=True)
class ImageMLP:
    """Softmax cross-entropy MLP on flattened images.

    Attributes:
        input_dim: flattened input size (64 for 8x8 digits).
        num_classes: output size.
        hidden_sizes: widths of the hidden layers.
        activation: one of ``relu``, ``tanh``, ``gelu``, ``elu``.
        batch_size: training batch size B; batches are drawn with replacement.
        init_scale: multiplier on LeCun-normal weights (biases start at zero).
        parametrization: ``standard`` (SP: LeCun-normal init, no multipliers) or ``mup``
            (muP, :mod:`lopt.tasks.mup`: zero readout init, readout input divided by the
            last hidden width, and per-tensor learning-rate multipliers,
            :meth:`update_scales`, that the training loops apply to every optimizer).
        mup_base_width: muP's base width ``b`` (:mod:`lopt.tasks.mup`): 1 gives muLO's
            absolute multipliers; a width gives mup's relative ones, equal to SP's at it.
        eval_batch_size: examples per chunk of ``evaluate``, which covers the whole split
            (bounds its memory, not its accuracy).
        compute_dtype: ``float32`` or ``bfloat16``: dtype of the forward pass; params,
            gradients, logits and the loss stay float32 (see :mod:`lopt.tasks.precision`).
    """

    input_dim: int
    num_classes: int
    hidden_sizes: tuple[int, ...] = (32,)
    activation: str = "relu"
    batch_size: int = 64
    init_scale: float = 1.0
    eval_batch_size: int = 512
    name: str = "image_mlp"
    compute_dtype: str = "float32"
    parametrization: str = "standard"
    mup_base_width: int = 1

    def __post_init__(self) -> None:
        check_precision(self.compute_dtype)
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"unknown parametrization {self.parametrization!r}; allowed: {', '.join(PARAMETRIZATIONS)}")
        if self.mup_base_width < 1:
            raise ValueError(f"mup_base_width must be >= 1, got {self.mup_base_width}")
        if self.parametrization == "mup" and not self.hidden_sizes:
            raise ValueError("parametrization 'mup' needs at least one hidden layer (hidden_sizes is empty)")

    @property
    def _sizes(self) -> tuple[int, ...]:
        return (self.input_dim, *self.hidden_sizes, self.num_classes)

    def init(self, key: jax.Array) -> Params:
        sizes = self._sizes
        keys = jax.random.split(key, len(sizes) - 1)
        params = {}
        for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
            w = jax.random.normal(k, (fan_in, fan_out)) * (self.init_scale / np.sqrt(fan_in))
            if self.parametrization == "mup" and i == len(sizes) - 2:
                w = jnp.zeros_like(w)  # muP readout: zero init (Tensor Programs V, Table 8)
            params[f"layer_{i}"] = {"w": w, "b": jnp.zeros((fan_out,))}
        return params

    def update_scales(self, rule: str) -> Params | None:
        """Per-tensor learning-rate multipliers (the params' tree) for update ``rule``
        (``adam`` or ``sgd``, :mod:`lopt.tasks.mup`); None under the standard parametrization."""
        if self.parametrization == "standard":
            return None
        return mlp_update_scales(self._sizes, rule, self.mup_base_width)

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        """Float32 logits ``[B, num_classes]``, computed in ``compute_dtype``."""
        params, x = cast_floating((params, x), self.compute_dtype)
        h = x.reshape((x.shape[0], -1))
        act = _ACTIVATIONS[self.activation]
        num = len(params)
        for i in range(num):
            layer = params[f"layer_{i}"]
            if self.parametrization == "mup" and i == num - 1:
                h = h * (self.mup_base_width / h.shape[-1])  # muP readout multiplier b/n_L: logits move O(1)
            h = h @ layer["w"] + layer["b"]
            if i < num - 1:
                h = act(h)
        return to_float32(h)

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        x, y = batch
        return softmax_xent(self.logits(params, x), y)

    def _draw(self, data: TaskData, key: jax.Array, split: str, size: int) -> Batch:
        return draw_examples(data, key, split, size)

    def batch(self, data: TaskData, key: jax.Array, split: str) -> Batch:
        return draw_examples(data, key, split, self.batch_size)

    def evaluate(self, params: Params, data: TaskData, key: jax.Array, split: str) -> dict[str, jax.Array]:
        """Exact loss and accuracy over the whole ``split`` (``key`` is unused)."""
        x, y = data[split]
        return exact_metrics(lambda bx: self.logits(params, bx), x, y, self.eval_batch_size)


def device_data(dataset) -> TaskData:
    """Move a :class:`lopt.data.Dataset` to device as the ``data`` pytree tasks expect."""
    return {s: (jnp.asarray(getattr(dataset, s).x), jnp.asarray(getattr(dataset, s).y)) for s in SPLITS}


@dataclasses.dataclass(frozen=True)
class ImageMLPFamily:
    """A distribution over :class:`ImageMLP` tasks on one dataset.

    Structural choices (widths, activation, batch size) change the compiled program,
    so the family samples them on the host; each sampled task is then vectorised over
    particles and seeds.
    """

    input_dim: int
    num_classes: int
    hidden_sizes: Sequence[tuple[int, ...]] = ((32,), (64,), (32, 32))
    activations: Sequence[str] = ("relu", "tanh")
    batch_sizes: Sequence[int] = (32, 64, 128)
    compute_dtype: str = "float32"
    parametrization: str = "standard"
    mup_base_width: int = 1

    def __post_init__(self) -> None:
        check_precision(self.compute_dtype)

    def sample(self, rng: np.random.Generator) -> ImageMLP:
        return ImageMLP(
            input_dim=self.input_dim,
            num_classes=self.num_classes,
            hidden_sizes=tuple(self.hidden_sizes[rng.integers(len(self.hidden_sizes))]),
            activation=str(self.activations[rng.integers(len(self.activations))]),
            batch_size=int(self.batch_sizes[rng.integers(len(self.batch_sizes))]),
            compute_dtype=self.compute_dtype,
            parametrization=self.parametrization,
            mup_base_width=self.mup_base_width,
        )
