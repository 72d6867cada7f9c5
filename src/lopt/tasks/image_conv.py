"""Small convolutional classifiers over prepared datasets (2-D on images, 1-D on MNIST-1D)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks.base import Batch, Params, TaskData
from lopt.tasks.image_mlp import (
    _ACTIVATIONS,
    draw_examples,
    exact_metrics,
    softmax_xent,
)
from lopt.tasks.precision import cast_floating, check_precision, to_float32

# (input, kernel, output) layouts of lax.conv_general_dilated by number of spatial axes
_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


@dataclasses.dataclass(frozen=True)
class ImageConv:
    """Softmax cross-entropy conv net: strided convs, global average pooling, linear head.

    Each conv layer has stride 2 and ``SAME`` padding (so a spatial size ``s`` becomes
    ``ceil(s / 2)``) followed by the activation; the last feature map is averaged over
    its spatial axes and fed to a linear head.

    Attributes:
        input_shape: per-example input shape: ``(H, W, C)`` (NHWC images, 2-D convs),
            ``(L, C)`` or ``(L,)`` (sequences, 1-D convs; ``(L,)`` is read as ``(L, 1)``).
        num_classes: output size.
        channels: output channels of each conv layer.
        kernel_size: spatial extent of every kernel (``k x k`` in 2-D, ``k`` in 1-D).
        activation: one of ``relu``, ``tanh``, ``gelu``, ``elu``.
        batch_size: training batch size B; batches are drawn with replacement.
        init_scale: multiplier on LeCun-normal weights (biases start at zero).
        eval_batch_size: examples per chunk of ``evaluate``, which covers the whole split
            (bounds its memory, not its accuracy).
        compute_dtype: ``float32`` or ``bfloat16``: dtype of the forward pass; params,
            gradients, logits and the loss stay float32 (see :mod:`lopt.tasks.precision`).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3
    activation: str = "relu"
    batch_size: int = 64
    init_scale: float = 1.0
    eval_batch_size: int = 512
    name: str = "image_conv"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.compute_dtype)
        if len(self.input_shape) not in (1, 2, 3):
            raise ValueError(
                f"input_shape must be (L,), (L, C) or (H, W, C); got {self.input_shape}"
            )
        if not self.channels:
            raise ValueError("channels must name at least one conv layer")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {sorted(_ACTIVATIONS)}")

    @property
    def _example_shape(self) -> tuple[int, ...]:
        """Per-example shape the convs see: spatial axes then channels."""
        shape = tuple(int(s) for s in self.input_shape)
        return (*shape, 1) if len(shape) == 1 else shape

    @property
    def num_spatial(self) -> int:
        """1 for sequence inputs (1-D convs), 2 for images (2-D convs)."""
        return len(self._example_shape) - 1

    def init(self, key: jax.Array) -> Params:
        d = self.num_spatial
        in_ch = self._example_shape[-1]
        keys = jax.random.split(key, len(self.channels) + 1)
        params = {}
        for i, out_ch in enumerate(self.channels):
            fan_in = self.kernel_size**d * in_ch
            shape = (self.kernel_size,) * d + (in_ch, out_ch)
            w = jax.random.normal(keys[i], shape) * (self.init_scale / np.sqrt(fan_in))
            params[f"conv_{i}"] = {"w": w, "b": jnp.zeros((out_ch,))}
            in_ch = out_ch
        w = jax.random.normal(keys[-1], (in_ch, self.num_classes)) * (
            self.init_scale / np.sqrt(in_ch)
        )
        params["head"] = {"w": w, "b": jnp.zeros((self.num_classes,))}
        return params

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        """Float32 logits ``[B, num_classes]``, computed in ``compute_dtype``."""
        params, x = cast_floating((params, x), self.compute_dtype)
        d = self.num_spatial
        h = x.reshape((x.shape[0], *self._example_shape))
        act = _ACTIVATIONS[self.activation]
        for i in range(len(self.channels)):
            layer = params[f"conv_{i}"]
            h = jax.lax.conv_general_dilated(
                h,
                layer["w"],
                window_strides=(2,) * d,
                padding="SAME",
                dimension_numbers=_DIMENSION_NUMBERS[d],
            )
            h = act(h + layer["b"])
        h = jnp.mean(h, axis=tuple(range(1, 1 + d)))  # global average pooling
        return to_float32(h @ params["head"]["w"] + params["head"]["b"])

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        x, y = batch
        return softmax_xent(self.logits(params, x), y)

    def batch(self, data: TaskData, key: jax.Array, split: str) -> Batch:
        return draw_examples(data, key, split, self.batch_size)

    def evaluate(
        self, params: Params, data: TaskData, key: jax.Array, split: str
    ) -> dict[str, jax.Array]:
        """Exact loss and accuracy over the whole ``split`` (``key`` is unused)."""
        x, y = data[split]
        return exact_metrics(lambda bx: self.logits(params, bx), x, y, self.eval_batch_size)
