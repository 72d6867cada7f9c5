"""Build a task (and its device data) from a validated task config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lopt.tasks.base import Task, TaskData


def build_task(cfg: Any, data_root: str | Path, eval_batch_size: int = 512) -> tuple[Task, TaskData]:
    """Return ``(task, data)`` for a task config from :mod:`lopt.config`.

    Image tasks load ``data_root/<dataset>`` (prepared by ``lopt prepare-data``) and
    move it to device; data-free tasks return ``data=None``.
    """
    from lopt.tasks.image_mlp import ImageMLP, device_data
    from lopt.tasks.quadratic import NoisyQuadratic

    if cfg.kind == "image_mlp":
        from lopt.data import load

        ds = load(cfg.dataset, Path(data_root))
        task = ImageMLP(
            input_dim=int(np.prod(ds.train.x.shape[1:])),
            num_classes=ds.num_classes,
            hidden_sizes=tuple(cfg.hidden_sizes),
            activation=cfg.activation,
            batch_size=cfg.batch_size,
            init_scale=cfg.init_scale,
            eval_batch_size=eval_batch_size,
            name=f"{cfg.dataset}_mlp_{'x'.join(map(str, cfg.hidden_sizes))}",
        )
        return task, device_data(ds)
    if cfg.kind == "quadratic":
        return NoisyQuadratic(cfg.dim, cfg.condition_number, cfg.noise_std), None
    raise ValueError(f"unknown task kind {cfg.kind!r}; allowed: image_mlp, quadratic")
