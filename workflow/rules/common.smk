# Load and validate the experiment config before any job runs.
#
# The experiment is one YAML file: the --configfile (more than one fails), else
# configs/default.yaml.
# lopt.config validates it (unknown keys, wrong types, out-of-range values fail here,
# naming the file, key path and allowed values). Each rule's `params.spec` holds the
# config sections it depends on, so with the params rerun trigger an edit reruns exactly
# the stages it affects, and every job downstream of them: a job also reruns when a job
# it reads from reruns.
#
# No input is ancient(): in Snakemake 9 a job whose inputs from a rerun job are all
# ancient() is not rerun with it (stale evaluations after a meta-training change).
# Snakemake also always reruns a job whose input is newer than its outputs, unless the
# input's recorded checksum still matches (files up to 1 MB, only where this checkout ran
# the job); the profile's rerun-triggers cannot turn that off. `dvc pull` writes files in
# arbitrary order, so pull with `lopt pull TARGETS`: it gives the pulled files one time.
#
# A study config (kind: study, configs/paper/*.yaml) selects the study rules instead of
# meta-train/evaluate/analyze; `--config quick=1` selects its CI-sized variant. That is
# the only --config key: settings live in the YAML, so any other key fails here instead
# of being silently ignored.
import copy
import json
import sys
from pathlib import Path
from snakemake.exceptions import WorkflowError
from lopt.config import DATASET_NAMES, changed_keys, load_config
from lopt.studies.config import is_study, load_study

_configfiles = list(dict.fromkeys(str(f) for f in workflow.overwrite_configfiles))  # in order, repeats once
if len(_configfiles) > 1:
    raise WorkflowError(
        f"--configfile {' '.join(_configfiles)}: one experiment config per run, got {len(_configfiles)}. "
        "The configs are not merged (lopt reads one file): pass exactly one --configfile."
    )
CONFIGFILE = _configfiles[0] if _configfiles else "configs/default.yaml"
IS_STUDY = is_study(CONFIGFILE)
OVERRIDES = dict(workflow.config_settings.config)  # --config KEY=VALUE only, not the YAML
ALLOWED_OVERRIDES = ("quick",) if IS_STUDY else ()
_unexpected = sorted(set(OVERRIDES) - set(ALLOWED_OVERRIDES))
if _unexpected:
    raise WorkflowError(
        f"--config {', '.join(_unexpected)}: unexpected key(s) for {CONFIGFILE}; allowed --config keys: "
        + (", ".join(ALLOWED_OVERRIDES) if ALLOWED_OVERRIDES else "none (quick applies to study configs only)")
        + ". Experiment settings are read from the config file only: edit it, or pass another --configfile."
    )
_quick = str(OVERRIDES.get("quick", "0")).strip().lower()
if _quick not in ("1", "true", "yes", "0", "false", "no"):
    raise WorkflowError(f"--config quick={OVERRIDES['quick']!r}: allowed values 1/true/yes or 0/false/no")
QUICK = IS_STUDY and _quick in ("1", "true", "yes")
QUICK_FLAG = " --quick" if QUICK else ""
CFG = load_study(CONFIGFILE, quick=QUICK) if IS_STUDY else load_config(CONFIGFILE)
EXP = CFG.name
RESULTS = f"results/{EXP}"
DATA = CFG.data.root
DATA_FILES = ("manifest.json", "train.npz", "inner_valid.npz", "outer_valid.npz", "test.npz")
EVAL_TASKS = [] if IS_STUDY else [t.name for t in CFG.evaluation.tasks]
# num_meta_seeds > 1: the other meta-training seeds, each meta-trained and evaluated under
# META_SEEDS_DIR/seed<S>/ (the config's own seed is the experiment's results/<name>/meta).
META_SEEDS = [] if IS_STUDY else CFG.meta_seeds()[1:]
META_SEEDS_DIR = f"{RESULTS}/meta_seeds"
META_SEEDS_PATTERN = "|".join(map(str, META_SEEDS)) or "(?!)"  # (?!): matches nothing


# Settings that change how, not what, a stage computes: never a rerun trigger.
NOT_A_TRIGGER = {"meta_train": ("particle_chunk",)}


def spec(*sections, resolved=None, meta_seed=None):
    """The config sections (or `section.key`s) a stage depends on, as a stable string for the params trigger
    (of this run's config, meta-trained from ``meta_seed`` if given, or of ``resolved``: a
    config dict an output recorded)."""
    return json.dumps(spec_dict(*sections, resolved=resolved, meta_seed=meta_seed), sort_keys=True)


def spec_dict(*sections, resolved=None, meta_seed=None):
    """What :func:`spec` serialises: ``{section: its resolved settings}``."""
    if resolved is None:
        resolved = (CFG if meta_seed is None else CFG.with_meta_seed(meta_seed)).to_dict()
    resolved = copy.deepcopy(resolved)  # popped below
    for section, keys in NOT_A_TRIGGER.items():
        for key in keys:
            resolved.get(section, {}).pop(key, None)

    def get(path):
        value = resolved
        for key in path.split("."):
            value = value[key]
        return value

    return {s: get(s) for s in sections}


def outdated_by_config(recorded, *sections, meta_seed=None):
    """[CONFIGFILE] when the output metadata file ``recorded`` (``lopt`` writes the resolved
    config into it) was computed from other ``sections`` than the config says, else []; the
    line on stderr names the keys that changed.

    The params trigger needs Snakemake's metadata of the job that wrote the output, which
    outputs fetched with `lopt pull` / `dvc pull` lack: without this, editing the config
    after a pull would rerun nothing. As an input, the config file reruns the job when it
    is newer than the outputs (it was edited after the pull); a line on stderr says so.
    ``meta_seed``: compare with this config meta-trained from that seed (rule meta_train_seed).
    """
    path = Path(recorded)
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())["config"]
        changed = changed_keys(spec_dict(*sections, resolved=old), spec_dict(*sections, meta_seed=meta_seed))
    except (ValueError, KeyError, TypeError):  # unreadable or older metadata: the params trigger decides
        return []
    if changed:
        print(f"lopt: {recorded} was computed with other settings than {CONFIGFILE} ({', '.join(changed)}); "
              f"its rule reruns if {CONFIGFILE} is newer, else use --forcerun", file=sys.stderr)
        return [CONFIGFILE]
    return []


def res(stage):
    """The rule's scheduler resources from the config's `resources.<stage>` (mem_mb, runtime, gpu, ...)."""
    return getattr(CFG.resources, stage).snakemake()


def stage_threads(stage):
    """The rule's threads: `resources.<stage>.cpus`, else every core of --cores (4 on a cluster executor, which has no --cores)."""
    return getattr(CFG.resources, stage).threads(workflow.resource_settings.cores or 4)


def launcher(stage):
    """Command prefix starting one process per host when `resources.<stage>.nodes` > 1.

    Nodes, tasks per node and CPUs per task are explicit: the SLURM jobstep plugin clears
    every SLURM_* layout variable (SLURM_NNODES, SLURM_CPUS_PER_TASK) before the job runs,
    and a bare `srun -n N` may then pack the N tasks on one node, one CPU each.
    """
    r = res(stage)
    if "mpi" not in r:
        return ""
    return (f"{r['mpi']} --nodes={r['nodes']} --ntasks-per-node=1 --cpus-per-task={stage_threads(stage)} "
            f"-n {r['tasks']} ")


def parent_dir(path, levels=1):
    """The directory ``levels`` up from one of a job's files, as the job sees it.

    Shell commands take every path from {input}/{output} (through these params), never
    from RESULTS or DATA: under a default storage provider (the Kubernetes profile) a
    job's files are local copies under .snakemake/storage/<provider>/..., and only
    those are fetched before the job and uploaded after it. Without one the result is
    the usual results/<name>/... or data/ path.
    """
    return str(Path(path).parents[levels - 1])


def data_root_flag(files):
    """` --data-root DIR` for a job reading the dataset files ``files`` (data/<name>/<file>),
    "" when it reads none (lopt then never opens the data root)."""
    roots = sorted({parent_dir(f, 2) for f in files})
    if len(roots) > 1:
        raise WorkflowError(f"dataset files under more than one root: {roots}")
    return f" --data-root {roots[0]}" if roots else ""


def dataset_files(*names):
    return [f"{DATA}/{n}/{f}" for n in sorted(filter(None, names)) for f in DATA_FILES]


def eval_task_dataset(task_name):
    task = next(t.task for t in CFG.evaluation.tasks if t.name == task_name)
    return getattr(task, "dataset", None)


if IS_STUDY:
    ANALYSIS_OUTPUTS = [f"{RESULTS}/{f}" for f in CFG.output_files() + CFG.variance_files()]
else:
    ANALYSIS_OUTPUTS = [
        f"{RESULTS}/figures/meta_training.png",
        f"{RESULTS}/figures/eval_curves.png",
        f"{RESULTS}/tables/final_losses.md",
        f"{RESULTS}/tables/summary.csv",
        f"{RESULTS}/tables/generalization.md",
        f"{RESULTS}/figures/generalization.png",
        f"{RESULTS}/tables/tradeoffs.md",
        f"{RESULTS}/tables/across_tasks.md",
        f"{RESULTS}/tables/across_tasks.tex",
        f"{RESULTS}/tables/final_losses.tex",
        f"{RESULTS}/tables/metrics.csv",
        f"{RESULTS}/figures/speedups.png",
        f"{RESULTS}/model_card.md",
    ] + ([f"{RESULTS}/tables/meta_seeds.md", f"{RESULTS}/tables/meta_seeds.csv", f"{RESULTS}/figures/meta_seeds.png"]
         if META_SEEDS else [])
