# Stage 2: meta-train the learned optimizer. Orbax checkpoints in meta/checkpoints are
# run state, not declared outputs, so a killed job re-run by Snakemake resumes from them.
META_SPEC = ("seed", "data", "lopt", "meta_train", "compute.precision")


rule meta_train:
    input:
        data=dataset_files(*{getattr(t, "dataset", None) for t in CFG.meta_train.tasks()}),
        config=outdated_by_config(f"{RESULTS}/meta/meta_params.npz.json", *META_SPEC),
    output:
        params=f"{RESULTS}/meta/meta_params.npz",
        # its metadata (architecture, sha256): lopt evaluate loads the two together
        params_meta=f"{RESULTS}/meta/meta_params.npz.json",
        metrics=f"{RESULTS}/meta/metrics.csv",
        card=f"{RESULTS}/meta/model_card.md",
    benchmark:
        f"{RESULTS}/benchmarks/meta_train.tsv"
    params:
        spec=spec(*META_SPEC),
        out=lambda w, output: parent_dir(output.params),
        data_root=lambda w, input: data_root_flag(input.data),
    threads: stage_threads("meta_train")
    resources:
        **res("meta_train"),
    shell:
        # resources.meta_train.nodes > 1: `srun ... -n N` starts one process per host; they
        # join through jax.distributed (lopt.runtime) and process 0 writes the outputs.
        launcher("meta_train") + "lopt meta-train --config {CONFIGFILE}{params.data_root} --out {params.out} --resume"


# num_meta_seeds > 1: the same job from each other meta-training seed (seed + 1, ...).
use rule meta_train as meta_train_seed with:
    input:
        data=rules.meta_train.input.data,
        config=lambda w: outdated_by_config(
            f"{META_SEEDS_DIR}/seed{w.meta_seed}/meta/meta_params.npz.json", *META_SPEC, meta_seed=int(w.meta_seed)
        ),
    output:
        params=f"{META_SEEDS_DIR}/seed{{meta_seed}}/meta/meta_params.npz",
        params_meta=f"{META_SEEDS_DIR}/seed{{meta_seed}}/meta/meta_params.npz.json",
        metrics=f"{META_SEEDS_DIR}/seed{{meta_seed}}/meta/metrics.csv",
        card=f"{META_SEEDS_DIR}/seed{{meta_seed}}/meta/model_card.md",
    benchmark:
        f"{RESULTS}/benchmarks/meta_train_seed{{meta_seed}}.tsv"
    params:
        spec=lambda w: spec(*META_SPEC, meta_seed=int(w.meta_seed)),
        out=lambda w, output: parent_dir(output.params),
        # the seed's flag rides on data_root: a new param (or shell text) on the parent rule
        # would rerun every finished run (Snakemake's params and code triggers)
        data_root=lambda w, input: data_root_flag(input.data) + f" --meta-seed {w.meta_seed}",
    wildcard_constraints:
        meta_seed=META_SEEDS_PATTERN,
