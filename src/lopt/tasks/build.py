"""Build a task (and its device data) from a validated task config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lopt.tasks.base import Task, TaskData
from lopt.tasks.precision import check_precision


def build_task(
    cfg: Any,
    data_root: str | Path,
    eval_batch_size: int = 512,
    precision: str = "float32",
    *,
    data_cfg: Any = None,
) -> tuple[Task, TaskData]:
    """Return ``(task, data)`` for a task config from :mod:`lopt.config`.

    ``precision`` (``float32`` or ``bfloat16``, else ``ValueError``) becomes the task's
    ``compute_dtype``: the dtype its forward pass runs in (see
    :mod:`lopt.tasks.precision`); data stays as loaded (float32 inputs, int labels).
    Image tasks load ``data_root/<dataset>`` (prepared by ``lopt prepare-data``) and
    move it to device; ``char_lm`` generates its corpus (no files) and moves the token
    splits to device; data-free tasks return ``data=None``. ``data_cfg`` (the config's
    ``data`` section), when given, must match the split settings the dataset was
    prepared with (:func:`lopt.data.load` raises otherwise).
    """
    from lopt.tasks.image_mlp import ImageMLP, device_data
    from lopt.tasks.quadratic import NoisyQuadratic

    precision = check_precision(precision)
    if cfg.kind in ("image_mlp", "image_conv", "char_lm"):  # what every network task shares
        common = {
            "batch_size": cfg.batch_size,
            "init_scale": cfg.init_scale,
            "eval_batch_size": eval_batch_size,
            "compute_dtype": precision,
        }
    if cfg.kind in ("image_mlp", "image_conv"):
        from lopt.data import load

        split = {} if data_cfg is None else {"seed": data_cfg.seed, "valid_fraction": data_cfg.valid_fraction}
        ds = load(cfg.dataset, Path(data_root), **split)
        if cfg.kind == "image_mlp":
            task = ImageMLP(
                input_dim=int(np.prod(ds.train.x.shape[1:])),
                num_classes=ds.num_classes,
                hidden_sizes=tuple(cfg.hidden_sizes),
                activation=cfg.activation,
                parametrization=cfg.parametrization,
                mup_base_width=cfg.mup_base_width,
                **common,
                name=f"{cfg.dataset}_mlp_{'x'.join(map(str, cfg.hidden_sizes))}"
                + ("_mup" if cfg.parametrization == "mup" else ""),
            )
        else:
            from lopt.tasks.image_conv import ImageConv

            task = ImageConv(
                input_shape=tuple(int(s) for s in ds.train.x.shape[1:]),
                num_classes=ds.num_classes,
                channels=tuple(cfg.channels),
                kernel_size=cfg.kernel_size,
                activation=cfg.activation,
                **common,
                name=f"{cfg.dataset}_conv_{'x'.join(map(str, cfg.channels))}",
            )
        return task, device_data(ds)
    if cfg.kind == "char_lm":
        import jax.numpy as jnp

        from lopt.tasks.char_lm import CharLM
        from lopt.tasks.corpus import VOCAB, corpus_data

        task = CharLM(
            vocab_size=len(VOCAB),
            model=cfg.model,
            cell=cfg.cell,
            seq_len=cfg.seq_len,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            **common,
            name=f"charlm_{cfg.model}_{cfg.hidden_size}x{cfg.num_layers}",
        )
        splits = corpus_data(cfg.corpus_seed, cfg.corpus_chars)
        shortest = min(len(t) for t in splits.values())
        if shortest <= cfg.seq_len:
            raise ValueError(
                f"char_lm: corpus_chars={cfg.corpus_chars} gives a {shortest}-token split, "
                f"too short for seq_len={cfg.seq_len} (need > seq_len tokens per split)"
            )
        return task, {s: jnp.asarray(t) for s, t in splits.items()}
    if cfg.kind == "quadratic":
        return NoisyQuadratic(
            cfg.dim, cfg.condition_number, cfg.noise_std, compute_dtype=precision
        ), None
    raise ValueError(
        f"unknown task kind {cfg.kind!r}; allowed: image_mlp, image_conv, quadratic, char_lm"
    )
