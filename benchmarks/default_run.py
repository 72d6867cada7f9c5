"""Summarise a finished default run: wall time per stage and the headline losses.

Reads Snakemake's per-rule benchmark files and the evaluation summary of an experiment:

    snakemake --cores 2 --configfile configs/default.yaml
    python benchmarks/default_run.py --results results/default
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("results/default"))
    args = parser.parse_args()
    rows = []
    for tsv in sorted((args.results / "benchmarks").glob("*.tsv")):
        b = pd.read_csv(tsv, sep="\t")
        rows.append({"stage": tsv.stem, "wall s": b["s"].iloc[0], "max RSS MB": b["max_rss"].iloc[0]})
    stages = pd.DataFrame(rows)
    print(stages.to_markdown(index=False, floatfmt=".1f"))
    print(f"\nsum of stage wall times: {stages['wall s'].sum():.0f} s")
    summary = pd.read_csv(args.results / "tables" / "summary.csv")
    train = summary[summary["split"] == "train"].pivot(index="task", columns="optimizer", values="loss_mean")
    print("\nfinal training loss (mean over seeds):\n")
    print(train.to_markdown(floatfmt=".4f"))
    print("\nmean over held-out tasks: " + ", ".join(f"{k} {v:.4f}" for k, v in train.mean().items()))


if __name__ == "__main__":
    main()
