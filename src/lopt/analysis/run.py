"""The analysis stage: read result files, write figures and tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from lopt.analysis.figures import (
    plot_eval_curves,
    plot_generalization,
    plot_meta_seeds,
    plot_meta_training,
    plot_speedups,
)
from lopt.analysis.meta_seeds import meta_seed_frame, meta_seed_table
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
from lopt.atomic import write_csv, write_text


def analyze(
    meta_metrics: Path,
    eval_dirs: list[Path],
    out_dir: Path,
    *,
    title: str = "",
    dpi: int = 120,
    band: str = "sem",
    tradeoffs: Path | None = None,
    meta_seed_evals: Mapping[int, list[Path]] | None = None,
) -> dict[str, Path]:
    """Write ``figures/{meta_training,eval_curves,generalization}.png`` and
    ``tables/{final_losses,generalization}.md`` (in- vs out-of-distribution side by side).

    Args:
        meta_metrics: ``metrics.csv`` of the meta-training stage.
        eval_dirs: evaluation output directories (each with curves.csv, summary.csv).
        out_dir: experiment results directory.
        tradeoffs: optional ``benchmarks/lopt_overhead.py`` CSV, rendered as
            ``tables/tradeoffs.md`` (the architectures' memory / time / size table).
        meta_seed_evals: with several meta-training seeds, seed -> that seed's optimizer's
            evaluation directories (``eval_dirs`` for the config's own seed), rendered as
            ``tables/meta_seeds.{md,csv}`` and ``figures/meta_seeds.png``.

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
    seed_frame = None
    if meta_seed_evals:
        seed_frame = meta_seed_frame(
            {s: pd.concat([read_result(Path(d) / "summary.csv", EVAL_SUMMARY) for d in dirs], ignore_index=True)
             for s, dirs in meta_seed_evals.items()},
            {s: pd.concat([read_result(Path(d) / "metrics.csv", EVAL_METRICS) for d in dirs], ignore_index=True)
             for s, dirs in meta_seed_evals.items()},
        )
    plot_meta_training(meta, paths["meta_training"], title=title, dpi=dpi)
    plot_eval_curves(curves, paths["eval_curves"], band=band, dpi=dpi)
    write_text(paths["final_losses"], final_loss_table(summary))
    write_csv(paths["summary"], summary)
    write_text(paths["generalization"], generalization_table(summary))
    plot_generalization(generalization_frame(summary), paths["generalization_figure"], dpi=dpi)
    write_csv(out_dir / "tables" / "metrics.csv", metrics)
    agg = across_tasks(metrics)
    write_text(paths["across_tasks"], across_tasks_table(agg))
    write_text(paths["across_tasks_latex"], across_tasks_table(agg, latex=True))
    write_text(out_dir / "tables" / "final_losses.tex", summary_latex(summary))
    plot_speedups(agg, paths["speedups"], dpi=dpi)
    card = Path(meta_metrics).with_name("model_card.md")
    if card.exists():  # the published card: architecture + training + how it evaluated
        paths["model_card"] = out_dir / "model_card.md"
        write_text(
            paths["model_card"],
            card.read_text()
            + "\n## Evaluation summary\n\n"
            + paths["across_tasks"].read_text()
            + "\n"
            + paths["generalization"].read_text(),
        )
    seed_paths = {"meta_seeds": out_dir / "tables" / "meta_seeds.md", "meta_seeds_csv": out_dir / "tables" / "meta_seeds.csv",
                  "meta_seeds_figure": out_dir / "figures" / "meta_seeds.png"}
    if seed_frame is not None:
        paths.update(seed_paths)
        write_text(paths["meta_seeds"], meta_seed_table(seed_frame))
        write_csv(paths["meta_seeds_csv"], seed_frame)
        plot_meta_seeds(seed_frame, paths["meta_seeds_figure"], dpi=dpi)
    else:  # back to one meta-seed: an earlier spread would sit beside tables it no longer describes
        for path in seed_paths.values():
            path.unlink(missing_ok=True)
    if tradeoffs is not None:
        paths["tradeoffs"] = out_dir / "tables" / "tradeoffs.md"
        write_text(paths["tradeoffs"], tradeoffs_table(tradeoff_rows))
    return paths
