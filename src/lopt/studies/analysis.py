"""Figures, tables and the claims check of a study, from its runs' ``curve.csv`` files.

Outputs (``results/<study>/``):

    figures/loss.png      eval loss vs outer step, total unroll steps and wall-clock
                          (seed mean, band over seeds)
    figures/theta.png     each theta coordinate vs outer step (``analysis.plot_theta``)
    figures/surface.png   eval-loss surface over a 2-D theta grid with each method's
                          mean trajectory (``analysis.surface``)
    tables/summary.csv    one row per method: settings, budget, start/final loss, theta
    tables/summary.md     the same as a Markdown table
    claims.md             each paper claim, the measured evidence and the verdict
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lopt.analysis.figures import _band, _save
from lopt.studies.config import ClaimConfig, StudyConfig


def load_curves(study: StudyConfig, runs_dir: Path) -> pd.DataFrame:
    """All runs' curves in one frame with ``method`` and ``seed`` columns."""
    frames = []
    for m in study.methods:
        for seed in study.seed_list():
            path = Path(runs_dir) / m.name / f"seed{seed}" / "curve.csv"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing run of study {study.name} (method {m.name}, seed {seed})")
            frames.append(pd.read_csv(path).assign(method=m.name, seed=seed))
    return pd.concat(frames, ignore_index=True)


def _theta_cols(curves: pd.DataFrame) -> list[str]:
    return sorted((c for c in curves.columns if c.startswith("theta_")), key=lambda c: int(c.split("_")[1]))


def plot_loss(study: StudyConfig, curves: pd.DataFrame, path: Path) -> None:
    """Eval loss against outer step, total unroll steps and training wall-clock."""
    axes_spec = (("outer_step", "outer iteration"), ("unroll_steps", "total unroll steps"), ("wall_time", "wall-clock (s)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, m in enumerate(study.methods):
        d = curves[curves["method"] == m.name]
        mean, lo, hi = _band(d.groupby("outer_step")["eval_loss"], study.analysis.band)
        xs = d.groupby("outer_step")[["unroll_steps", "wall_time"]].mean()
        for ax, (col, _) in zip(axes, axes_spec):
            x = mean.index.to_numpy() if col == "outer_step" else xs[col].to_numpy()
            ax.plot(x, mean.to_numpy(), color=f"C{i}", label=m.display)
            ax.fill_between(x, lo.to_numpy(), hi.to_numpy(), color=f"C{i}", alpha=0.2, lw=0)
    for ax, (_, label) in zip(axes, axes_spec):
        ax.set_xlabel(label)
        ax.set_ylabel("eval loss (unperturbed)")
        if study.analysis.log_loss:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{study.name}: {study.description}" if study.description else study.name, fontsize=10)
    fig.tight_layout()
    _save(fig, path, study.analysis.dpi)


def plot_theta(study: StudyConfig, curves: pd.DataFrame, path: Path, names: tuple[str, ...] | None) -> None:
    """Each theta coordinate against outer step; dashed lines mark claim targets."""
    cols = _theta_cols(curves)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.4), squeeze=False)
    targets = [c.target for c in study.claims if c.target is not None]
    for j, col in enumerate(cols):
        ax = axes[0, j]
        for i, m in enumerate(study.methods):
            d = curves[curves["method"] == m.name]
            mean, lo, hi = _band(d.groupby("outer_step")[col], study.analysis.band)
            ax.plot(mean.index, mean.to_numpy(), color=f"C{i}", label=m.display)
            ax.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), color=f"C{i}", alpha=0.2, lw=0)
        for target in targets:
            if j < len(target):
                ax.axhline(target[j], color="k", ls="--", lw=0.8)
        if curves[col].abs().max() > 100 * max(1.0, curves[col].iloc[0]):
            ax.set_yscale("symlog", linthresh=1.0)  # a diverging method must not flatten the rest
        ax.set_xlabel("outer iteration")
        ax.set_ylabel(names[j] if names and j < len(names) else col)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path, study.analysis.dpi)


def plot_surface(study: StudyConfig, curves: pd.DataFrame, path: Path) -> None:
    """The unperturbed eval loss over a theta grid, with each method's mean trajectory."""
    import jax
    import jax.numpy as jnp

    from lopt.studies.systems import build_system

    spec = study.analysis.surface
    assert spec is not None
    system = build_system(study, study.seed_offset)
    g0 = np.linspace(*spec.theta0, spec.num)
    g1 = np.linspace(*spec.theta1, spec.num)
    grid = jnp.asarray(np.stack(np.meshgrid(g0, g1), -1).reshape(-1, 2), dtype=jnp.float32)
    values = jax.jit(jax.vmap(lambda th: system.evaluate(th, system.data)))(grid)
    z = np.asarray(values).reshape(spec.num, spec.num)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    levels = np.geomspace(max(np.nanmin(z), 1e-6), np.nanmax(z), 30) if study.analysis.log_loss else 30
    norm = matplotlib.colors.LogNorm() if study.analysis.log_loss else None
    cs = ax.contourf(g0, g1, z, levels=levels, norm=norm, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="eval loss")
    for i, m in enumerate(study.methods):
        d = curves[curves["method"] == m.name].groupby("outer_step")[["theta_0", "theta_1"]].mean()
        ax.plot(d["theta_0"], d["theta_1"], color=f"C{i}", lw=1.5, label=m.display)
        ax.plot(d["theta_0"].iloc[-1], d["theta_1"].iloc[-1], "o", color=f"C{i}", ms=4)
    ax.plot(*curves[["theta_0", "theta_1"]].iloc[0], "k*", ms=9, label="start")
    ax.set_xlabel("theta 0")
    ax.set_ylabel("theta 1")
    ax.legend(frameon=False, fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path, study.analysis.dpi)


def summarise(study: StudyConfig, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per method: settings, budget, start and final eval loss (mean, sem)."""
    rows = []
    theta_cols = _theta_cols(curves)
    for m in study.methods:
        d = curves[curves["method"] == m.name]
        last = d[d["outer_step"] == d["outer_step"].max()]
        first = d[d["outer_step"] == 0]
        n = len(last)
        row = {
            "method": m.name,
            "label": m.display,
            "estimator": m.estimator,
            "num_particles": m.num_particles,
            "trunc_length": study.trunc_length(m),
            "sigma": m.sigma if m.estimator != "tbptt" else math.nan,
            "outer": f"{m.outer.name} {m.outer.lr:g}" + (f" decay {m.outer.lr_decay}" if m.outer.lr_decay else ""),
            "outer_steps": int(last["outer_step"].iloc[0]),
            "unroll_steps": int(last["unroll_steps"].iloc[0]),
            "seeds": n,
            "start_loss": float(first["eval_loss"].mean()),
            "final_loss": float(last["eval_loss"].mean()),
            "final_loss_sem": float(last["eval_loss"].std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "best_loss": float(d.groupby("seed")["eval_loss"].min().mean()),
            "wall_time_s": float(last["wall_time"].mean()),
        }
        for c in theta_cols:
            row[f"final_{c}"] = float(last[c].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def first_reach(curves: pd.DataFrame, method: str, threshold: float, axis: str) -> float:
    """The ``axis`` value where ``method``'s seed-mean eval loss first is <= ``threshold``."""
    d = curves[curves["method"] == method].groupby("outer_step")
    mean = d["eval_loss"].mean()
    x = d[axis].mean()
    hit = mean.to_numpy() <= threshold
    return float(x.to_numpy()[hit.argmax()]) if hit.any() else math.inf


def check_claim(claim: ClaimConfig, curves: pd.DataFrame, summary: pd.DataFrame) -> tuple[bool, str]:
    """Whether the measured curves support ``claim``, and the evidence in words."""
    s = summary.set_index("method")

    def loss(name: str) -> str:
        sem = s.at[name, "final_loss_sem"]
        return f"{s.at[name, 'final_loss']:.4g}" + ("" if np.isnan(sem) else f" ± {sem:.2g}")

    cols = _theta_cols(curves)
    start = curves[curves["outer_step"] == 0].groupby("method")[cols].mean()

    def theta(name: str) -> np.ndarray:
        return np.asarray([s.at[name, f"final_{c}"] for c in cols], dtype=float)

    if claim.check == "lower_final":
        ok = all(s.at[claim.better, "final_loss"] < s.at[w, "final_loss"] for w in claim.worse)
        ev = f"final loss {claim.better} {loss(claim.better)} vs " + ", ".join(f"{w} {loss(w)}" for w in claim.worse)
        return ok, ev
    if claim.check == "reaches_first":
        reach = {m: first_reach(curves, m, claim.threshold, claim.axis) for m in [claim.better, *claim.worse]}
        ok = all(reach[claim.better] < reach[w] for w in claim.worse)
        ev = ", ".join(f"{m} {v:.3g}" for m, v in reach.items())
        return ok, f"{claim.axis.replace('_', ' ')} to reach loss {claim.threshold:g}: {ev}"
    if claim.check == "reduces_loss":
        ok = all(s.at[m, "final_loss"] < claim.factor * s.at[m, "start_loss"] for m in claim.methods)
        ev = "; ".join(f"{m}: {s.at[m, 'start_loss']:.4g} -> {loss(m)}" for m in claim.methods)
        return ok, ev + f" (needs < {claim.factor:g} x start)"
    target = np.asarray(claim.target, dtype=float)
    oks, parts = [], []
    for m in claim.methods:
        th0, th = start.loc[m].to_numpy(dtype=float), theta(m)
        parts.append(f"{m}: {np.array2string(th0, precision=4)} -> {np.array2string(th, precision=4)}")
        if claim.check == "theta_near":
            oks.append(bool(np.all(np.abs(th - target) <= claim.tol)))
        else:  # theta_moves_away
            oks.append(bool(np.linalg.norm(th - target) > np.linalg.norm(th0 - target)))
    tol = f", tol {claim.tol:g}" if claim.check == "theta_near" else ""
    return all(oks), "; ".join(parts) + f" (target {target.tolist()}{tol})"


def check_claims(study: StudyConfig, curves: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[ClaimConfig, bool, str]]:
    """Every claim of the study with its verdict and evidence."""
    return [(claim, *check_claim(claim, curves, summary)) for claim in study.claims]


def claims_markdown(study: StudyConfig, verdicts: list[tuple[ClaimConfig, bool, str]]) -> str:
    lines = [f"# {study.name}: paper claims vs this run", ""]
    if study.reference:
        lines += [f"Reference: {study.reference}", ""]
    lines += [
        f"Seeds: {study.seeds}; numbers are seed means of the final unperturbed eval loss (± sem).",
        "",
        "| claim | source | measured | reproduced |",
        "|---|---|---|---|",
    ]
    for claim, ok, ev in verdicts:
        lines.append(f"| {claim.text} | {claim.source} | {ev} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def analyze_study(study: StudyConfig, results: str | Path) -> dict[str, Path]:
    """Write every output of :meth:`StudyConfig.output_files` under ``results``."""
    from lopt.studies.systems import build_system

    results = Path(results)
    curves = load_curves(study, results / "runs")
    paths = {name: results / name for name in study.output_files()}
    plot_loss(study, curves, paths["figures/loss.png"])
    if "figures/theta.png" in paths:
        names = build_system(study, study.seed_offset).theta_names if study.system.kind != "lopt_training" else None
        plot_theta(study, curves, paths["figures/theta.png"], names)
    if "figures/surface.png" in paths:
        plot_surface(study, curves, paths["figures/surface.png"])
    summary = summarise(study, curves)
    paths["tables/summary.csv"].parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(paths["tables/summary.csv"], index=False)
    paths["tables/summary.md"].write_text(summary.to_markdown(index=False, floatfmt=".4g") + "\n")
    paths["claims.md"].write_text(claims_markdown(study, check_claims(study, curves, summary)))
    return paths
