"""Learning-rate sweeps inside a study: final loss against the outer learning rate.

A study sweeps a method's learning rate by listing it several times with only
``outer.lr`` (and ``name`` / ``label``) changed. Methods that agree on everything else
form one *sweep group*; every group with two or more rates gets a line in

    figures/lr_sweep.png   final eval loss (seed mean, sem bars) vs learning rate, log-log,
                           the group's best rate marked, diverged rates on the top edge
    tables/lr_sweep.csv    one row per (group, rate): final and best-so-far loss, best flag
    tables/lr_sweep.md     the same as a Markdown table

"Best" is the lowest final loss (seed mean): what a rate selected on this study would be
run with, so a run that dips and then diverges does not win on its dip.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from lopt.analysis.figures import _save
from lopt.atomic import write_csv, write_text
from lopt.studies.config import StudyConfig


def sweep_table(study: StudyConfig, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, learning rate) from the study's summary table."""
    by_name = summary.set_index("method")
    rows = []
    for label, members in study.lr_sweep_groups().items():
        finals = {m.name: float(by_name.loc[m.name, "final_loss"]) for m in members}
        best = min(finals, key=lambda n: math.inf if math.isnan(finals[n]) else finals[n])
        for m in members:
            s = by_name.loc[m.name]
            rows.append({
                "group": label,
                "lr": m.outer.lr,
                "method": m.name,
                "seeds": int(s["seeds"]),
                "start_loss": float(s["start_loss"]),
                "final_loss": float(s["final_loss"]),
                "final_loss_sem": float(s["final_loss_sem"]),
                "best_loss": float(s["best_loss"]),
                "best": m.name == best,
            })
    return pd.DataFrame(rows, columns=["group", "lr", "method", "seeds", "start_loss", "final_loss",
                                       "final_loss_sem", "best_loss", "best"])


def plot_sweep(study: StudyConfig, table: pd.DataFrame, path: Path) -> None:
    """Final eval loss vs learning rate, one line per group, the best rate starred.

    The y-axis stops a little above the largest starting loss, so that rates which
    diverged (final loss above where training began) do not squash the region that
    matters; those are drawn as open triangles on the top edge.
    """
    top = 1.5 * float(table["start_loss"].max())
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, d) in enumerate(table.groupby("group", sort=False)):
        shown = d["final_loss"].clip(upper=top)
        ax.errorbar(d["lr"], shown, yerr=d["final_loss_sem"].where(d["final_loss"] < top).fillna(0.0),
                    color=f"C{i}", marker="o", ms=4, capsize=2, label=label)
        over = d["final_loss"] >= top
        ax.plot(d.loc[over, "lr"], shown[over], marker="^", ms=8, mfc="none", color=f"C{i}", ls="none")
        b = d[d["best"]]
        ax.plot(b["lr"], b["final_loss"], marker="*", ms=14, color=f"C{i}", ls="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=top * 1.05)
    ax.set_xlabel("outer learning rate")
    ax.set_ylabel("final eval loss (unperturbed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title(f"{study.name}: final loss vs learning rate\n(star: lowest; triangle: diverged, "
                 f"above {top:.3g})", fontsize=9)
    fig.tight_layout()
    _save(fig, path, study.analysis.dpi)


def write_sweep(study: StudyConfig, summary: pd.DataFrame, paths: dict[str, Path]) -> None:
    """Write the sweep's figure and tables (the caller checks that there are groups)."""
    table = sweep_table(study, summary)
    plot_sweep(study, table, paths["figures/lr_sweep.png"])
    write_csv(paths["tables/lr_sweep.csv"], table)
    write_text(paths["tables/lr_sweep.md"], table.to_markdown(index=False, floatfmt=".4g") + "\n")
