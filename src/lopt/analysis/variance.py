"""Estimator variance against the number of truncations per episode (``lopt variance``).

The PES and NRES papers' variance comparison, measured on any unrolled system. For a
fixed horizon ``T`` and truncation lengths ``K`` (``n = T / K`` truncations per
episode), we draw ``replicas`` independent single-pair estimates (one antithetic pair,
so the numbers are per-pair variances; an ``N``-pair estimate has ``1/N`` of them) at a
fixed ``theta`` and report the trace of their covariance. Two protocols:

``episode``
    One worker unrolls one whole episode from step 0 in ``n`` windows; its estimate is
    the mean of the ``n`` window estimates (the per-episode estimate that online ES
    spreads over ``n`` outer steps). NRES reuses one noise for the episode, so its
    episode estimate *is* the FullES estimate for every ``n``: constant in ``n``. PES
    draws a fresh noise per window and weighs each window by the accumulated sum, so
    its variance grows with ``n``. Both are unbiased for the same gradient.
``window``
    Step-unlocked workers in steady state (after ``2 n`` burn-in windows, every worker
    has begun a new episode at a uniformly random phase); one sample is one window's
    estimate (what one outer step of training averages over workers).

Each replica is an independent pair (its own PRNG stream); the standard error of the
variance is taken over replicas (``window`` samples of one replica are correlated, so
they are first averaged per replica).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from lopt.estimators import make_estimator
from lopt.unroll import UnrolledSystem

PROTOCOLS = ("episode", "window")


def _flat(tree: Any) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def sample_estimates(
    system: UnrolledSystem,
    theta: Any,
    data: Any,
    estimator: str,
    trunc_length: int,
    sigma: float,
    replicas: int,
    key: jax.Array,
    protocol: str = "episode",
    windows: int | None = None,
) -> np.ndarray:
    """Single-pair estimates, flattened: ``[replicas, D]`` (episode) or ``[replicas, W, D]``.

    ``windows`` (window protocol only) is the number of windows kept per replica after
    the burn-in; default ``n = T / K``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    horizon = system.horizon
    if horizon % trunc_length:
        raise ValueError(f"trunc_length {trunc_length} must divide the horizon {horizon}")
    n = horizon // trunc_length
    extra = {"noise_reuse_steps": None} if estimator == "gpes" else {}
    est = make_estimator(
        estimator,
        system,
        num_particles=2,
        trunc_length=horizon if estimator == "full_es" else trunc_length,
        sigma=sigma,
        step_unlock=protocol == "window",
        **extra,
    )
    steps = 1 if estimator == "full_es" else n
    burn_in = 0 if protocol == "episode" else 2 * n
    kept = steps if protocol == "episode" else (windows or n)

    def one_replica(key):
        state = est.init(theta, jax.random.fold_in(key, 0), data)

        def body(state, i):
            g, state, _ = est.estimate(theta, state, jax.random.fold_in(key, i + 1), data)
            return state, _flat(g)

        state, _ = jax.lax.scan(body, state, jnp.arange(burn_in)) if burn_in else (state, None)
        _, gs = jax.lax.scan(body, state, jnp.arange(burn_in, burn_in + kept))
        return gs.mean(0) if protocol == "episode" else gs

    keys = jax.random.split(key, replicas)
    return np.asarray(jax.jit(jax.vmap(one_replica))(keys))


def variance_summary(samples: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(trace of covariance, its standard error over replicas, mean estimate)``.

    ``samples`` is ``[R, D]`` or ``[R, W, D]`` (windows pooled, replicas independent).
    """
    if samples.ndim == 2:
        samples = samples[:, None, :]
    mean = samples.reshape(-1, samples.shape[-1]).mean(0)
    sq = ((samples - mean) ** 2).sum(-1)  # [R, W]
    per_replica = sq.mean(1)
    r = per_replica.shape[0]
    correction = samples.shape[0] * samples.shape[1] / (samples.shape[0] * samples.shape[1] - 1)
    return float(per_replica.mean() * correction), float(per_replica.std(ddof=1) / np.sqrt(r)), mean


def measure(
    system: UnrolledSystem,
    theta: Any,
    data: Any,
    *,
    estimators: Sequence[str] = ("pes", "nres"),
    trunc_lengths: Sequence[int],
    sigma: float,
    replicas: int,
    seed: int = 0,
    protocols: Sequence[str] = PROTOCOLS,
) -> pd.DataFrame:
    """Variance (trace of covariance, per antithetic pair) for every combination.

    Returns one row per (protocol, estimator, K): ``truncations = T / K``, ``variance``,
    ``variance_se`` and ``grad_norm`` (norm of the mean estimate, a sanity check that
    all estimators target the same gradient).
    """
    rows = []
    for protocol in protocols:
        for name in estimators:
            for k in trunc_lengths:
                key = jax.random.fold_in(jax.random.PRNGKey(seed), k)
                samples = sample_estimates(system, theta, data, name, k, sigma, replicas, key, protocol)
                var, se, mean = variance_summary(samples)
                rows.append({
                    "protocol": protocol,
                    "estimator": name,
                    "trunc_length": k,
                    "truncations": system.horizon // k,
                    "variance": var,
                    "variance_se": se,
                    "grad_norm": float(np.linalg.norm(mean)),
                    "replicas": replicas,
                    "sigma": sigma,
                })
    return pd.DataFrame(rows)


def plot_variance(table: pd.DataFrame, path, *, title: str = "", dpi: int = 120) -> None:
    """Variance vs truncations per episode, one panel per protocol (log-log, ±2 SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lopt.analysis.figures import _save

    protocols = list(dict.fromkeys(table["protocol"]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(4.8 * len(protocols), 3.6), squeeze=False)
    labels = {"episode": "per-episode estimate", "window": "per-window estimate (step-unlocked)"}
    for ax, protocol in zip(axes[0], protocols):
        d = table[table["protocol"] == protocol]
        for i, name in enumerate(dict.fromkeys(d["estimator"])):
            e = d[d["estimator"] == name].sort_values("truncations")
            ax.errorbar(e["truncations"], e["variance"], yerr=2 * e["variance_se"], marker="o", ms=4,
                        capsize=2, color=f"C{i}", label=name.upper())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("truncations per episode (T / K)")
        ax.set_ylabel("variance (trace, per pair)")
        ax.set_title(labels.get(protocol, protocol), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi)
