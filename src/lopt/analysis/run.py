"""The analysis stage: read result files, write figures and tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lopt.analysis.figures import (
    plot_eval_curves,
    plot_generalization,
    plot_meta_training,
    plot_speedups,
)
from lopt.analysis.results import (
    EVAL_CURVES,
    EVAL_METRICS,
    EVAL_SUMMARY,
    META_METRICS,
    TRADEOFFS,
    read_result,
)
from lopt.analysis.tables import (
    across_tasks,
    across_tasks_table,
    final_loss_table,
    generalization_frame,
    generalization_table,
    summary_latex,
    tradeoffs_table,
)


def analyze(
    meta_metrics: Path,
    eval_dirs: list[Path],
    out_dir: Path,
    *,
    title: str = "",
    dpi: int = 120,
    band: str = "sem",
    tradeoffs: Path | None = None,
) -> dict[str, Path]:
    """Write ``figures/{meta_training,eval_curves,generalization}.png`` and
    ``tables/{final_losses,generalization}.md`` (in- vs out-of-distribution side by side).

    Args:
        meta_metrics: ``metrics.csv`` of the meta-training stage.
        eval_dirs: evaluation output directories (each with curves.csv, summary.csv).
        out_dir: experiment results directory.
        tradeoffs: optional ``benchmarks/lopt_overhead.py`` CSV, rendered as
            ``tables/tradeoffs.md`` (the architectures' memory / time / size table).

    Returns:
        Paths of the written files by name.
    """
    out_dir = Path(out_dir)
    paths = {
        "meta_training": out_dir / "figures" / "meta_training.png",
        "eval_curves": out_dir / "figures" / "eval_curves.png",
        "final_losses": out_dir / "tables" / "final_losses.md",
        "summary": out_dir / "tables" / "summary.csv",
        "generalization_figure": out_dir / "figures" / "generalization.png",
        "generalization": out_dir / "tables" / "generalization.md",
        "across_tasks": out_dir / "tables" / "across_tasks.md",
        "across_tasks_latex": out_dir / "tables" / "across_tasks.tex",
        "speedups": out_dir / "figures" / "speedups.png",
    }
    # every input read (and checked) before any output is written
    meta = read_result(meta_metrics, META_METRICS)
    curves = pd.concat([read_result(Path(d) / "curves.csv", EVAL_CURVES) for d in eval_dirs], ignore_index=True)
    summary = pd.concat([read_result(Path(d) / "summary.csv", EVAL_SUMMARY) for d in eval_dirs], ignore_index=True)
    metrics = pd.concat([read_result(Path(d) / "metrics.csv", EVAL_METRICS) for d in eval_dirs], ignore_index=True)
    tradeoff_rows = read_result(tradeoffs, TRADEOFFS) if tradeoffs is not None else None
    plot_meta_training(meta, paths["meta_training"], title=title, dpi=dpi)
    plot_eval_curves(curves, paths["eval_curves"], band=band, dpi=dpi)
    paths["final_losses"].parent.mkdir(parents=True, exist_ok=True)
    paths["final_losses"].write_text(final_loss_table(summary))
    summary.to_csv(paths["summary"], index=False)
    paths["generalization"].write_text(generalization_table(summary))
    plot_generalization(generalization_frame(summary), paths["generalization_figure"], dpi=dpi)
    metrics.to_csv(out_dir / "tables" / "metrics.csv", index=False)
    agg = across_tasks(metrics)
    paths["across_tasks"].write_text(across_tasks_table(agg))
    paths["across_tasks_latex"].write_text(across_tasks_table(agg, latex=True))
    (out_dir / "tables" / "final_losses.tex").write_text(summary_latex(summary))
    plot_speedups(agg, paths["speedups"], dpi=dpi)
    card = Path(meta_metrics).with_name("model_card.md")
    if card.exists():  # the published card: architecture + training + how it evaluated
        paths["model_card"] = out_dir / "model_card.md"
        paths["model_card"].write_text(
            card.read_text()
            + "\n## Evaluation summary\n\n"
            + paths["across_tasks"].read_text()
            + "\n"
            + paths["generalization"].read_text()
        )
    if tradeoffs is not None:
        paths["tradeoffs"] = out_dir / "tables" / "tradeoffs.md"
        paths["tradeoffs"].write_text(tradeoffs_table(tradeoff_rows))
    return paths
