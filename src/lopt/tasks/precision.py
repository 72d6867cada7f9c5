"""Inner-task compute precision (mixed precision): ``float32`` or ``bfloat16``.

Policy. Parameters (the float32 master weights), the inner optimizer's state, the
gradients and the learned optimizer all stay float32; only a task's forward pass runs
in its ``compute_dtype``. At the start of the forward a task casts its parameters and
its floating-point inputs to the compute dtype (:func:`cast_floating`; integer labels
and tokens are left alone), so matmuls, convs, attention and recurrences run in it.
Numerically delicate reductions stay float32: the logits / predictions are cast back
to float32 before the loss (softmax cross-entropy / log-softmax in float32), and
LayerNorm statistics and attention softmax are computed in float32. The returned loss
and metrics are therefore float32, and gradients come back float32 automatically
(the transpose of a cast is a cast back to the parameter's dtype).

With ``float32`` every cast is skipped (a leaf already of the target dtype is returned
as is), so the computation, its jaxpr and its results are exactly those of the code
without casts. A task keeps its precision as a string field so that the frozen task
dataclass stays hashable (usable as a static ``jit`` argument).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")


def check_precision(name: str) -> str:
    """Return ``name`` if it is one of :data:`PRECISIONS`, else raise ``ValueError``."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    return name


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Cast the floating-point array leaves of ``tree`` to ``dtype``.

    Integer / boolean leaves (labels, tokens, masks) and leaves already of ``dtype`` are
    returned unchanged (no ``convert_element_type`` is emitted for them).
    """
    dtype = jnp.dtype(dtype)

    def cast(leaf: Any) -> Any:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        return leaf if leaf.dtype == dtype else leaf.astype(dtype)

    return jax.tree.map(cast, tree)


def to_float32(x: Any) -> Any:
    """``cast_floating(x, float32)``: the way back from the compute dtype."""
    return cast_floating(x, jnp.float32)
