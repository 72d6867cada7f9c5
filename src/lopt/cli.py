"""``lopt <command>``: a thin command line over the library (argparse, stdlib).

Every command but ``schema`` and ``pull`` takes ``--config`` (an experiment YAML),
validates it before importing JAX, and writes under the experiment's directories by
default; each also takes ``--quiet`` (no progress bar). The commands that read
datasets also take ``--data-root DIR``, which replaces the config's ``data.root`` (the
workflow passes its jobs' local copies, e.g. under a Snakemake storage provider):

    lopt validate     --config C                      check a config, print the resolved one
    lopt schema                                       print the config JSON schema
    lopt prepare-data --config C [--dataset NAME]     data/<name>/
    lopt meta-train   --config C [--meta-seed S] [--out DIR] [--resume] [--process-id N]
    lopt baselines    --config C --task NAME [--out DIR]   tuned baselines of one task
    lopt evaluate     --config C --task NAME [--meta-seed S] [--checkpoint REF] [--baselines DIR] [--out DIR]
    lopt analyze      --config C [--results DIR] [--tradeoffs CSV]

Estimator studies (``configs/paper/*.yaml``, ``kind: study``; ``--quick`` selects the
study's CI-sized variant, results in ``results/<name>_quick``):

    lopt study-run     --config S --method M --seed N [--quick] [--out DIR]
    lopt study-analyze --config S [--quick] [--results DIR]
    lopt variance      --config S [--quick] [--out DIR]   PES/NRES variance vs T/K
    lopt schema --study                               print the study config JSON schema

Versioned outputs (no config):

    lopt pull [-r REMOTE] [TARGET ...]   dvc pull, then one modification time for every pulled file
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


def _tracker(cfg: ExperimentConfig, job_type: str, name: str, primary: bool = True):
    from lopt.tracking import Tracker

    return Tracker(
        project=cfg.tracking.project,
        name=f"{cfg.name}-{name}",
        group=cfg.name,
        job_type=job_type,
        config=cfg.to_dict(),
        dir=Path(os.environ.get("WANDB_DIR", ".")),
        mode=cfg.tracking.mode if primary else "disabled",  # one W&B run per multi-host job
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
    from lopt.runtime import setup

    launch = setup(cfg.compute, process_id=args.process_id)  # before any JAX work
    from lopt.meta_train import meta_train

    primary = launch.process_id == 0
    seed, suffix = _meta_seed(cfg, args)
    out = Path(args.out or _results(cfg) / cfg.meta_seed_dir(seed) / "meta")
    with _tracker(cfg.with_meta_seed(seed), "meta-train", f"meta-train{suffix}", primary) as tracker:
        state = meta_train(cfg, out, resume=args.resume, tracker=tracker, progress=not args.quiet, meta_seed=seed)
        if cfg.tracking.log_artifacts and primary:
            # everything `lopt evaluate --checkpoint wandb:...` needs: weights, metadata, card
            files = [out / "meta_params.npz", out / "meta_params.npz.json", out / "model_card.md"]
            meta = json.loads(files[1].read_text())
            tracker.log_artifact(files, name=f"{cfg.name}-lopt{suffix}", type="learned-optimizer",
                                 metadata={"outer_steps": int(state.step), "sha256": meta["sha256"],
                                           "estimator": meta["estimator"], "optimizer": meta["optimizer"]})
    if primary:
        print(f"meta-trained {cfg.name}{suffix}: {int(state.step)} outer steps -> {out}")


def _meta_seed(cfg: ExperimentConfig, args: argparse.Namespace) -> tuple[int, str]:
    """``--meta-seed`` (checked by main against the config's meta-seeds), else the config's
    ``seed``; and the suffix naming its W&B runs and artifact ("" for the config's own seed)."""
    seed = cfg.seed if args.meta_seed is None else args.meta_seed
    return seed, "" if seed == cfg.seed else f"-seed{seed}"


def cmd_evaluate(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.runtime import setup

    setup(cfg.compute, distributed=False)  # evaluation is one process per task
    from lopt.artifacts import resolve_checkpoint
    from lopt.evaluate import run_evaluation
    from lopt.optimizers.pretrained import load_pretrained

    seed, suffix = _meta_seed(cfg, args)
    ref = args.checkpoint or _results(cfg) / cfg.meta_seed_dir(seed) / "meta" / "meta_params.npz"
    # read (and verify) the optimizer before a tracked run starts: a bad checkpoint is a
    # one-line error, not a failed W&B run
    pretrained = load_pretrained(resolve_checkpoint(ref), fallback=cfg.lopt)
    baselines = None
    if args.baselines is not None:  # checked before a tracked run starts, too
        from lopt.evaluate import baseline_settings, load_baselines

        baselines = load_baselines(args.baselines, baseline_settings(cfg, args.task))
    out = Path(args.out or _results(cfg) / cfg.meta_seed_dir(seed) / "eval" / args.task)
    with _tracker(cfg.with_meta_seed(seed), "evaluate", f"eval-{args.task}{suffix}") as tracker:
        summary = run_evaluation(cfg, args.task, pretrained, out, tracker=tracker, baselines=baselines)
    print(summary.to_string(index=False))


def cmd_baselines(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.runtime import setup

    setup(cfg.compute, distributed=False)  # one process per task, as evaluate
    from lopt.evaluate import run_baselines

    out = Path(args.out or _results(cfg) / "baselines" / args.task)
    with _tracker(cfg, "baselines", f"baselines-{args.task}") as tracker:
        summary = run_baselines(cfg, args.task, out, tracker=tracker)
    print(summary.to_string(index=False))


def cmd_study_run(study, args: argparse.Namespace) -> None:
    from lopt.runtime import setup
    from lopt.studies.run import run_method

    setup(study.compute, distributed=False)  # before any JAX work; one process per run

    out = Path(args.out or _results(study) / "runs" / args.method / f"seed{args.seed}")
    with _tracker(study, "study-run", f"{args.method}-seed{args.seed}") as tracker:
        path = run_method(study, args.method, args.seed, out, tracker=tracker, progress=not args.quiet)
    print(f"{study.name}/{args.method}/seed{args.seed} -> {path}")


def cmd_study_analyze(study, args: argparse.Namespace) -> None:
    from lopt.studies.analysis import analyze_study

    root = Path(args.results or _results(study))
    paths = analyze_study(study, root)
    print((root / "tables" / "summary.md").read_text())
    print((root / "claims.md").read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")


def cmd_variance(study, args: argparse.Namespace) -> None:
    from lopt.analysis.variance import measure, plot_variance
    from lopt.atomic import write_csv
    from lopt.runtime import setup
    from lopt.studies.systems import build_system

    spec = study.analysis.variance
    assert spec is not None  # main() refuses a study without analysis.variance
    setup(study.compute, distributed=False)
    root = Path(args.out or _results(study))
    system = build_system(study, study.seed_offset)
    table = measure(
        system.system, system.theta0, system.data, estimators=spec.estimators, trunc_lengths=spec.trunc_lengths,
        sigma=spec.sigma, replicas=spec.replicas, seed=study.seed_offset, protocols=spec.protocols,
    )
    write_csv(root / "tables" / "variance.csv", table)
    plot_variance(table, root / "figures" / "variance.png", title=f"{study.name}: estimator variance at theta_0",
                  dpi=study.analysis.dpi)
    print(table.to_string(index=False))


def cmd_analyze(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    from lopt.analysis.run import analyze

    root = Path(args.results or _results(cfg))
    eval_dirs = [root / "eval" / t.name for t in cfg.evaluation.tasks]
    seed_dirs = {s: [root / cfg.meta_seed_dir(s) / "eval" / t.name for t in cfg.evaluation.tasks]
                 for s in cfg.meta_seeds()} if cfg.num_meta_seeds > 1 else {}
    missing = [p for p in [root / "meta" / "metrics.csv"] + [d / f for d in eval_dirs for f in ("curves.csv", "summary.csv")]
               + [d / f for dirs in seed_dirs.values() for d in dirs for f in ("summary.csv", "metrics.csv")]
               if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{args.config}: no results to analyse at {', '.join(map(str, missing))}; run meta-train and "
            "evaluate first (snakemake does both), or pass --results DIR"
        )
    paths = analyze(
        root / "meta" / "metrics.csv",
        eval_dirs,
        root,
        title=f"{cfg.name}: {cfg.meta_train.estimator.upper()} meta-training",
        dpi=cfg.analysis.dpi,
        band=cfg.analysis.band,
        tradeoffs=args.tradeoffs,
        meta_seed_evals=seed_dirs,
    )
    print((root / "tables" / "final_losses.md").read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")


COMMANDS = {
    "validate": cmd_validate,
    "prepare-data": cmd_prepare_data,
    "meta-train": cmd_meta_train,
    "baselines": cmd_baselines,
    "evaluate": cmd_evaluate,
    "analyze": cmd_analyze,
    "study-run": cmd_study_run,
    "study-analyze": cmd_study_analyze,
    "variance": cmd_variance,
}
STUDY_ONLY = {"study-run", "study-analyze", "variance"}
BOTH = {"validate", "prepare-data"}
READS_DATA = {"prepare-data", "meta-train", "baselines", "evaluate", "study-run", "variance"}  # cfg.data.root


def _with_data_root(cfg, data_root: Path | None):
    """``cfg`` reading its datasets from ``data_root`` (``--data-root``) instead of ``data.root``.

    The same directory leaves ``cfg`` as it is, so a run without a storage provider
    (where the workflow passes the config's own root) records the config's own root. The
    root is not part of the checkpoint fingerprint either way.
    """
    if data_root is None or Path(data_root) == Path(cfg.data.root):
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(data_root)})})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    schema = sub.add_parser("schema", help="print the experiment (or --study) config JSON schema")
    schema.add_argument("--study", action="store_true", help="the study schema (configs/paper/schema.json)")
    pull_p = sub.add_parser(
        "pull", help="dvc pull TARGETS, then give the pulled files one modification time (see README, DVC)"
    )
    pull_p.add_argument("targets", nargs="*", help="DVC targets, e.g. data pretrained@default experiment@default")
    pull_p.add_argument(
        "-r", "--remote", help="DVC remote to pull from (default: the default remote, then each other remote in turn; 'release': the shipped artifacts)"
    )
    pull_p.add_argument(
        "-f", "--force", action="store_true", help="overwrite workspace files that differ from the pulled ones (dvc pull --force)"
    )
    helps = {
        "validate": "validate a config and print it with defaults filled in",
        "prepare-data": "prepare the datasets a config uses under data/",
        "meta-train": "meta-train the learned optimizer (checkpointed, resumable)",
        "baselines": "tune the baselines' learning rates and train them on one held-out task",
        "evaluate": "evaluate the learned optimizer and tuned baselines on one held-out task",
        "analyze": "write figures and tables from result files",
        "study-run": "meta-train one (method, seed) of an estimator study",
        "study-analyze": "figures, tables and the paper-claims check of a study",
        "variance": "estimator variance vs truncations per episode on a study's system",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path, help="experiment YAML (configs/*.yaml)")
        if name in STUDY_ONLY or name in BOTH:
            p.add_argument("--quick", action="store_true", help="studies: the CI-sized variant")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name in READS_DATA:
            p.add_argument(
                "--data-root",
                type=Path,
                help="directory holding the prepared datasets (<root>/<name>/); default: the config's data.root",
            )
        if name == "prepare-data":
            p.add_argument("--dataset", action="append", help="dataset name (repeatable); default: all the config uses")
        if name == "meta-train":
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/meta)")
            p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
            p.add_argument(
                "--process-id",
                type=int,
                help="multi-host runs started by hand: this process's rank (else LOPT_PROCESS_ID, "
                "else the launcher's: SLURM / Open MPI); see compute.distributed",
            )
        if name in ("meta-train", "evaluate"):
            p.add_argument(
                "--meta-seed",
                type=int,
                help="one of the config's meta-training seeds (seed .. seed + num_meta_seeds - 1); "
                "default: seed. Other seeds than `seed` default to results/<name>/meta_seeds/seed<S>/",
            )
        if name in ("evaluate", "baselines"):
            p.add_argument("--task", required=True, help="evaluation task name from the config")
        if name == "baselines":
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/baselines/<task>)")
        if name == "evaluate":
            p.add_argument(
                "--baselines",
                type=Path,
                help="`lopt baselines` output for this task and config (checked); default: tune and train them here",
            )
            p.add_argument(
                "--checkpoint",
                "--meta-params",
                help="meta_params.npz, a directory holding one, a DVC-tracked path, or "
                "wandb:<entity>/<project>/<name>:<version> (default results/<name>/meta/)",
            )
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/eval/<task>)")
        if name in ("analyze", "study-analyze"):
            p.add_argument("--results", type=Path, help="experiment results directory (default results/<name>)")
            if name == "analyze":
                p.add_argument(
                    "--tradeoffs",
                    type=Path,
                    help="benchmarks/lopt_overhead.py's CSV, rendered as tables/tradeoffs.md",
                )
        if name == "variance":
            p.add_argument("--out", type=Path, help="results directory (default results/<name>)")
        if name == "study-run":
            p.add_argument("--method", required=True, help="method name from the study's methods")
            p.add_argument("--seed", required=True, type=int, help="seed (one of the study's seeds)")
            p.add_argument("--out", type=Path, help="output directory (default results/<name>/runs/<method>/seed<N>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from lopt.studies.config import StudyConfig

        try:
            print(json.dumps(StudyConfig.model_json_schema() if args.study else json_schema(), indent=2), flush=True)
        except BrokenPipeError:  # `lopt schema | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush is quiet
        return 0
    if args.command == "pull":
        from dvc.exceptions import NotDvcRepoError

        from lopt.artifacts import pull

        try:
            return pull(args.targets, remote=args.remote, force=args.force)
        except NotDvcRepoError:
            print(f"error: {Path.cwd()} is not inside a DVC repository; run `lopt pull` in the lopt checkout",
                  file=sys.stderr)
            return 2
    from lopt.studies.config import is_study, load_study

    try:
        study = is_study(args.config)
        if study and args.command not in STUDY_ONLY | BOTH:
            raise ConfigError(f"{args.config}: a study config (kind: study) needs study-run, study-analyze or variance (or validate, prepare-data), not {args.command}")
        if not study and args.command in STUDY_ONLY:
            raise ConfigError(f"{args.config}: {args.command} needs a study config (kind: study, configs/paper/*.yaml)")
        if not study and getattr(args, "quick", False):  # else the full experiment would run where a small one was asked for
            raise ConfigError(f"{args.config}: --quick applies to study configs (kind: study) only; "
                              "an experiment config has no quick variant")
        cfg = load_study(args.config, quick=args.quick) if study else load_config(args.config)
        cfg = _with_data_root(cfg, getattr(args, "data_root", None))
        if args.command in ("evaluate", "baselines"):
            names = [t.name for t in cfg.evaluation.tasks]
            if args.task not in names:
                raise ConfigError(
                    f"{args.config}: --task {args.task!r} is not one of the config's evaluation.tasks; "
                    f"allowed: {', '.join(names)}"
                )
        if args.command == "variance" and cfg.analysis.variance is None:
            raise ConfigError(f"{args.config}: analysis.variance is not set; give it (trunc_lengths, ...) to run `lopt variance`")
        if args.command == "study-run":
            names = [m.name for m in cfg.methods]
            if args.method not in names:
                raise ConfigError(f"{args.config}: --method {args.method!r} is not one of the study's methods; "
                                  f"allowed: {', '.join(names)}")
            if args.seed not in cfg.seed_list():
                raise ConfigError(f"{args.config}: seed {args.seed} is not one of the study's seeds {cfg.seed_list()}")
        if getattr(args, "meta_seed", None) is not None and args.meta_seed not in cfg.meta_seeds():
            raise ConfigError(f"{args.config}: --meta-seed {args.meta_seed} is not one of the experiment's "
                              f"meta-training seeds {cfg.meta_seeds()} (seed .. seed + num_meta_seeds - 1)")
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():  # before any compute is spent
            raise ConfigError(f"--out {out}: exists and is not a directory")
    except (ConfigError, KeyError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command](cfg, args)
    except (FileNotFoundError, FileExistsError) as exc:
        # an unresolvable --checkpoint (lopt.artifacts); checkpoints that meta-train without
        # --resume would overwrite (lopt.meta_train)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        from lopt.analysis.results import ResultsError
        from lopt.checkpoint import CheckpointError
        from lopt.evaluate import BaselinesError

        # a damaged checkpoint, npz or result table; baselines of other settings: all named in the message
        if not isinstance(exc, (CheckpointError, BaselinesError, ResultsError)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from lopt.data import DatasetError
        from lopt.runtime import SetupError

        if not isinstance(exc, (SetupError, DatasetError)):  # both name the file and the fix
            raise
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, a full disk, a file for a directory)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
