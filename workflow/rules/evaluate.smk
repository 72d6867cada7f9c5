# Stage 3: the LR-tuned baselines of one held-out task (independent of the learned
# optimizer: a meta-training change never re-runs them, and a cluster runs them beside it), then
# the learned optimizer on that task, joined with them.
BASELINES_SPEC = ("data", "evaluation", "compute.precision")


rule baselines:
    input:
        data=lambda w: dataset_files(eval_task_dataset(w.task)),
        config=lambda w: outdated_by_config(f"{RESULTS}/baselines/{w.task}/settings.json", *BASELINES_SPEC),
    output:
        curves=f"{RESULTS}/baselines/{{task}}/curves.csv",
        sweep=f"{RESULTS}/baselines/{{task}}/sweep.csv",
        reference=f"{RESULTS}/baselines/{{task}}/reference.csv",
        settings=f"{RESULTS}/baselines/{{task}}/settings.json",
    benchmark:
        f"{RESULTS}/benchmarks/baselines_{{task}}.tsv"
    params:
        spec=spec(*BASELINES_SPEC),
        out=lambda w, output: parent_dir(output.curves),
        data_root=lambda w, input: data_root_flag(input.data),
    wildcard_constraints:
        task="|".join(EVAL_TASKS),
    threads: stage_threads("evaluate")
    resources:
        **res("evaluate"),
    shell:
        "lopt baselines --config {CONFIGFILE}{params.data_root} --task {wildcards.task} --out {params.out} --quiet"


rule evaluate:
    input:
        params=f"{RESULTS}/meta/meta_params.npz",
        params_meta=f"{RESULTS}/meta/meta_params.npz.json",  # read with it, from the same folder
        data=lambda w: dataset_files(eval_task_dataset(w.task)),
        baselines=rules.baselines.output,
    output:
        curves=f"{RESULTS}/eval/{{task}}/curves.csv",
        summary=f"{RESULTS}/eval/{{task}}/summary.csv",
        sweep=f"{RESULTS}/eval/{{task}}/sweep.csv",
        metrics=f"{RESULTS}/eval/{{task}}/metrics.csv",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_{{task}}.tsv"
    params:
        spec=spec("data", "lopt", "evaluation", "compute.precision"),
        out=lambda w, output: parent_dir(output.curves),
        baselines=lambda w, input: parent_dir(input.baselines[0]),  # all four files are inputs: fetched under storage
        data_root=lambda w, input: data_root_flag(input.data),
    wildcard_constraints:
        task="|".join(EVAL_TASKS),
    threads: stage_threads("evaluate")
    resources:
        **res("evaluate"),
    shell:
        "lopt evaluate --config {CONFIGFILE}{params.data_root} --task {wildcards.task} "
        "--checkpoint {input.params} --baselines {params.baselines} --out {params.out} --quiet"


# num_meta_seeds > 1: each other meta-seed's optimizer against the same tuned baselines.
use rule evaluate as evaluate_seed with:
    input:
        params=rules.meta_train_seed.output.params,
        params_meta=rules.meta_train_seed.output.params_meta,
        data=lambda w: dataset_files(eval_task_dataset(w.task)),
        baselines=rules.baselines.output,
    output:
        curves=f"{META_SEEDS_DIR}/seed{{meta_seed}}/eval/{{task}}/curves.csv",
        summary=f"{META_SEEDS_DIR}/seed{{meta_seed}}/eval/{{task}}/summary.csv",
        sweep=f"{META_SEEDS_DIR}/seed{{meta_seed}}/eval/{{task}}/sweep.csv",
        metrics=f"{META_SEEDS_DIR}/seed{{meta_seed}}/eval/{{task}}/metrics.csv",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_{{task}}_seed{{meta_seed}}.tsv"
    params:
        spec=rules.evaluate.params.spec,
        out=lambda w, output: parent_dir(output.curves),
        baselines=lambda w, input: parent_dir(input.baselines[0]),
        # the seed's flag rides on data_root: a new param (or shell text) on the parent rule
        # would rerun every finished run (Snakemake's params and code triggers)
        data_root=lambda w, input: data_root_flag(input.data) + f" --meta-seed {w.meta_seed}",
    wildcard_constraints:
        task="|".join(EVAL_TASKS),
        meta_seed=META_SEEDS_PATTERN,
