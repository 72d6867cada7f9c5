"""Figures, tables and the claims check of a study, from its runs' ``curve.csv`` files.

Outputs (``results/<study>/``):

    figures/loss.png      eval loss vs outer step, total unroll steps and wall-clock
                          (seed mean, band over seeds)
    figures/theta.png     each theta coordinate vs outer step (``analysis.plot_theta``)
    figures/surface.png   eval-loss surface over a 2-D theta grid with each method's
                          mean trajectory (``analysis.surface``)
    tables/summary.csv    one row per method: settings, budget, start/final loss, theta
    tables/summary.md     the same as a Markdown table
    figures/lr_sweep.png, tables/lr_sweep.{csv,md}
                          final loss vs learning rate of methods that differ only in
                          ``outer.lr`` (:mod:`lopt.studies.sweep`)
    claims.md             each paper claim, the measured evidence and the verdict: yes / no /
                          inconclusive, decided with a margin of MARGIN (2) standard errors
                          of the seed means (VERDICT_RULE)
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
from lopt.analysis.metrics import seed_mean, seed_sem
from lopt.analysis.results import STUDY_CURVE, read_result
from lopt.atomic import write_csv, write_text
from lopt.studies.config import ClaimConfig, StudyConfig
from lopt.studies.sweep import write_sweep


def load_curves(study: StudyConfig, runs_dir: Path) -> pd.DataFrame:
    """All runs' curves in one frame with ``method`` and ``seed`` columns."""
    frames = []
    for m in study.methods:
        for seed in study.seed_list():
            path = Path(runs_dir) / m.name / f"seed{seed}" / "curve.csv"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing run of study {study.name} (method {m.name}, seed {seed})")
            frames.append(read_result(path, STUDY_CURVE).assign(method=m.name, seed=seed))
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


def _sem(values: pd.Series) -> float:
    """Standard error of the mean over seeds (NaN for one seed, or when one diverged)."""
    return seed_sem(values)


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
            # a diverged (non-finite) seed counts as +inf: it never helps a method's mean
            "start_loss": seed_mean(first["eval_loss"]),
            "start_loss_sem": _sem(first["eval_loss"]),
            "final_loss": seed_mean(last["eval_loss"]),
            "final_loss_sem": _sem(last["eval_loss"]),
            "best_loss": seed_mean(d.groupby("seed")["eval_loss"].min()),
            "wall_time_s": float(last["wall_time"].mean()),
        }
        for c in theta_cols:
            row[f"final_{c}"] = float(last[c].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def first_reach(curves: pd.DataFrame, method: str, threshold: float, axis: str) -> float:
    """The ``axis`` value where ``method``'s seed-mean eval loss first is <= ``threshold``."""
    return _reach(curves, method, threshold, axis)[0]


#: Verdict margin in standard errors (of the seed means): a claim is "yes" only when the
#: measured difference exceeds MARGIN x its standard error, "no" when it is that far the
#: other way, "inconclusive" in between.
MARGIN = 2.0
VERDICT_RULE = (
    f"yes: the claimed difference exceeds {MARGIN:g} standard errors of the seed means "
    f"(combined: sqrt(sem_a^2 + sem_b^2)); no: it is reversed by that margin; inconclusive "
    f"otherwise. Reaching a loss first: yes when even the better method's pessimistic band "
    f"(mean loss + {MARGIN:g} sem, axis value + {MARGIN:g} sem over seeds) reaches the threshold "
    f"before the other's optimistic band (both - {MARGIN:g} sem) does; no when the same holds "
    f"the other way round. With one seed there is no standard error and the means decide."
)


def _verdict(diff: float, se: float) -> str:
    """``diff`` > 0 supports the claim; compared with ``MARGIN`` x ``se`` (0 when NaN)."""
    margin = MARGIN * (0.0 if math.isnan(se) else se)
    if diff > margin:
        return "yes"
    if diff < -margin:
        return "no"
    return "inconclusive"


def _combine(verdicts: list[str]) -> str:
    """All parts yes -> yes; any part no -> no; else inconclusive."""
    if "no" in verdicts:
        return "no"
    return "yes" if all(v == "yes" for v in verdicts) else "inconclusive"


def _reach(curves: pd.DataFrame, method: str, threshold: float, axis: str) -> tuple[float, float, float]:
    """(seed-mean, optimistic, pessimistic) ``axis`` value at which ``method`` reaches ``threshold``.

    Optimistic: the first evaluation where mean loss - MARGIN sem <= threshold, at its mean
    axis value - MARGIN sem; pessimistic: mean loss + MARGIN sem, axis value + MARGIN sem.
    Infinity where the curve never gets there.
    """
    d = curves[curves["method"] == method].groupby("outer_step")
    n = d["eval_loss"].count().to_numpy()
    root_n = np.sqrt(np.maximum(n, 1))
    loss, loss_se = d["eval_loss"].mean().to_numpy(), np.nan_to_num(d["eval_loss"].std(ddof=1).to_numpy() / root_n)
    x, x_se = d[axis].mean().to_numpy(), np.nan_to_num(d[axis].std(ddof=1).to_numpy() / root_n)

    def first(hit: np.ndarray, xs: np.ndarray) -> float:
        return float(xs[hit.argmax()]) if hit.any() else math.inf

    return (
        first(loss <= threshold, x),
        first(loss - MARGIN * loss_se <= threshold, x - MARGIN * x_se),
        first(loss + MARGIN * loss_se <= threshold, x + MARGIN * x_se),
    )


def check_claim(claim: ClaimConfig, curves: pd.DataFrame, summary: pd.DataFrame) -> tuple[str, str]:
    """The verdict on ``claim`` ("yes", "no" or "inconclusive", see VERDICT_RULE) and the evidence."""
    s = summary.set_index("method")

    def loss(name: str) -> str:
        sem = s.at[name, "final_loss_sem"]
        return f"{s.at[name, 'final_loss']:.4g}" + ("" if np.isnan(sem) else f" ± {sem:.2g}")

    def final_last(m: str) -> pd.DataFrame:
        d = curves[curves["method"] == m]
        return d[d["outer_step"] == d["outer_step"].max()].sort_values("seed")

    cols = _theta_cols(curves)
    start = curves[curves["outer_step"] == 0].groupby("method")[cols].mean()

    def theta(name: str) -> np.ndarray:
        return np.asarray([s.at[name, f"final_{c}"] for c in cols], dtype=float)

    def per_method(names: list[str], verdicts: list[str]) -> str:
        """The verdict per compared method, when they differ."""
        return "" if len(set(verdicts)) < 2 else " (" + ", ".join(f"{m}: {v}" for m, v in zip(names, verdicts)) + ")"

    if claim.check == "lower_final":
        b = claim.better
        parts = [
            _verdict(s.at[w, "final_loss"] - s.at[b, "final_loss"],
                     math.hypot(s.at[b, "final_loss_sem"], s.at[w, "final_loss_sem"]))
            for w in claim.worse
        ]
        ev = f"final loss {b} {loss(b)} vs " + ", ".join(f"{w} {loss(w)}" for w in claim.worse)
        return _combine(parts), ev + per_method(claim.worse, parts)
    if claim.check == "reaches_first":
        reach = {m: _reach(curves, m, claim.threshold, claim.axis) for m in [claim.better, *claim.worse]}
        b = reach[claim.better]
        parts = []
        for w in claim.worse:
            if b[2] < reach[w][1]:
                parts.append("yes")
            elif reach[w][2] < b[1]:
                parts.append("no")
            else:
                parts.append("inconclusive")

        def show(r: tuple[float, float, float]) -> str:
            return f"{r[0]:.3g}" + ("" if r[1] == r[0] == r[2] else f" [{r[1]:.3g}, {r[2]:.3g}]")

        ev = ", ".join(f"{m} {show(r)}" for m, r in reach.items())
        band = f" (brackets: optimistic, pessimistic at ± {MARGIN:g} sem)" if any(r[1] != r[2] for r in reach.values()) else ""
        ev = f"{claim.axis.replace('_', ' ')} to reach loss {claim.threshold:g}: {ev}{band}"
        return _combine(parts), ev + per_method(claim.worse, parts)
    if claim.check == "reduces_loss":
        parts = [
            _verdict(claim.factor * s.at[m, "start_loss"] - s.at[m, "final_loss"],
                     math.hypot(s.at[m, "final_loss_sem"], claim.factor * np.nan_to_num(s.at[m, "start_loss_sem"])))
            for m in claim.methods
        ]
        ev = "; ".join(f"{m}: {s.at[m, 'start_loss']:.4g} -> {loss(m)}" for m in claim.methods)
        return _combine(parts), ev + f" (needs < {claim.factor:g} x start)" + per_method(claim.methods, parts)
    target = np.asarray(claim.target, dtype=float)
    verdicts, parts = [], []
    for m in claim.methods:
        th0, th = start.loc[m].to_numpy(dtype=float), theta(m)
        parts.append(f"{m}: {np.array2string(th0, precision=4)} -> {np.array2string(th, precision=4)}")
        last = final_last(m)
        if claim.check == "theta_near":
            sem = np.asarray([_sem(last[c]) for c in cols], dtype=float)
            # per coordinate: tol - |mean - target| must exceed MARGIN sem of the mean
            verdicts.append(_combine([_verdict(claim.tol - abs(t - g), e) for t, g, e in zip(th, target, sem)]))
        else:  # theta_moves_away: per seed, distance to target at the end minus at the start
            first = curves[(curves["method"] == m) & (curves["outer_step"] == 0)].sort_values("seed")
            moved = (np.linalg.norm(last[cols].to_numpy(float) - target, axis=1)
                     - np.linalg.norm(first[cols].to_numpy(float) - target, axis=1))
            sem = float(moved.std(ddof=1) / math.sqrt(len(moved))) if len(moved) > 1 else math.nan
            verdicts.append(_verdict(float(moved.mean()), sem))
    tol = f", tol {claim.tol:g}" if claim.check == "theta_near" else ""
    ev = "; ".join(parts) + f" (target {target.tolist()}{tol})"
    return _combine(verdicts), ev + per_method(claim.methods, verdicts)


def check_claims(study: StudyConfig, curves: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[ClaimConfig, str, str]]:
    """Every claim of the study with its verdict ("yes", "no", "inconclusive") and evidence."""
    return [(claim, *check_claim(claim, curves, summary)) for claim in study.claims]


def claims_markdown(study: StudyConfig, verdicts: list[tuple[ClaimConfig, str, str]]) -> str:
    lines = [f"# {study.name}: paper claims vs this run", ""]
    if study.reference:
        lines += [f"Reference: {study.reference}", ""]
    lines += [
        f"Seeds: {study.seeds}; numbers are seed means of the final unperturbed eval loss (± sem).",
        "",
        f"Verdicts: {VERDICT_RULE}",
        "",
        "| claim | source | measured | reproduced |",
        "|---|---|---|---|",
    ]
    for claim, verdict, ev in verdicts:
        lines.append(f"| {claim.text} | {claim.source} | {ev} | {verdict} |")
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
    write_csv(paths["tables/summary.csv"], summary)
    write_text(paths["tables/summary.md"], summary.to_markdown(index=False, floatfmt=".4g") + "\n")
    write_text(paths["claims.md"], claims_markdown(study, check_claims(study, curves, summary)))
    if "tables/lr_sweep.csv" in paths:
        write_sweep(study, summary, paths)
    return paths
