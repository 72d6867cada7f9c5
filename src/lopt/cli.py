"""``lopt <command>``: a thin command line over the library (argparse, stdlib).

Every command takes ``--config`` (an experiment YAML), validates it before importing
JAX, and writes under the experiment's directories by default:

    lopt validate     --config C                      check a config, print the resolved one
    lopt schema                                       print the config JSON schema
    lopt prepare-data --config C [--dataset NAME]     data/<name>/
    lopt meta-train   --config C [--out DIR] [--resume]
    lopt evaluate     --config C --task NAME [--meta-params P] [--out DIR]
    lopt analyze      --config C [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lopt.config import ConfigError, ExperimentConfig, json_schema, load_config


def _results(cfg: ExperimentConfig) -> Path:
    return Path("results") / cfg.name


def _tracker(cfg: ExperimentConfig, job_type: str, name: str):
    from lopt.tracking import Tracker

    return Tracker(
        project=cfg.tracking.project,
        name=f"{cfg.name}-{name}",
        group=cfg.name,
        job_type=job_type,
        config=cfg.to_dict(),
        dir=Path(os.environ.get("WANDB_DIR", ".")),
        mode=cfg.tracking.mode,
    )


def cmd_validate(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def cmd_prepare_data(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.data import prepare

    names = args.dataset or cfg.datasets()
    for name in names:
        path = prepare(name, Path(cfg.data.root), seed=cfg.data.seed, valid_fraction=cfg.data.valid_fraction)
        print(f"prepared {name} -> {path}")


def cmd_meta_train(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.meta_train import meta_train

    out = Path(args.out or _results(cfg) / "meta")
    with _tracker(cfg, "meta-train", "meta-train") as tracker:
        state = meta_train(cfg, out, resume=args.resume, tracker=tracker, progress=not args.quiet)
        if cfg.tracking.log_artifacts:
            tracker.log_artifact(out / "meta_params.npz", name=f"{cfg.name}-lopt", type="learned-optimizer",
                                 metadata={"outer_steps": int(state.step)})
    print(f"meta-trained {cfg.name}: {int(state.step)} outer steps -> {out}")


def cmd_evaluate(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.evaluate import run_evaluation

    meta_params = Path(args.meta_params or _results(cfg) / "meta" / "meta_params.npz")
    out = Path(args.out or _results(cfg) / "eval" / args.task)
    with _tracker(cfg, "evaluate", f"eval-{args.task}") as tracker:
        summary = run_evaluation(cfg, args.task, meta_params, out, tracker=tracker)
    print(summary.to_string(index=False))


def cmd_analyze(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.analysis.run import analyze

    root = Path(args.results or _results(cfg))
    paths = analyze(
        root / "meta" / "metrics.csv",
        [root / "eval" / t.name for t in cfg.evaluation.tasks],
        root,
        title=f"{cfg.name}: {cfg.meta_train.estimator.upper()} meta-training",
        dpi=cfg.analysis.dpi,
        band=cfg.analysis.band,
    )
    print((root / "tables" / "final_losses.md").read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")


COMMANDS = {
    "validate": cmd_validate,
    "prepare-data": cmd_prepare_data,
    "meta-train": cmd_meta_train,
    "evaluate": cmd_evaluate,
    "analyze": cmd_analyze,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the experiment config JSON schema")
    helps = {
        "validate": "validate a config and print it with defaults filled in",
        "prepare-data": "prepare the datasets a config uses under data/",
        "meta-train": "meta-train the learned optimizer (checkpointed, resumable)",
        "evaluate": "evaluate the learned optimizer and tuned baselines on one held-out task",
        "analyze": "write figures and tables from result files",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path, help="experiment YAML (configs/*.yaml)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "prepare-data":
            p.add_argument("--dataset", action="append", help="dataset name (repeatable); default: all the config uses")
        if name == "meta-train":
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/meta)")
            p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
        if name == "evaluate":
            p.add_argument("--task", required=True, help="evaluation task name from the config")
            p.add_argument("--meta-params", type=Path, help="meta_params.npz (default results/<name>/meta/)")
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/eval/<task>)")
        if name == "analyze":
            p.add_argument("--results", type=Path, help="experiment results directory (default results/<name>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    COMMANDS[args.command](cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
