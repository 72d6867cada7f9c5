# Stage 1: prepare a dataset into data/<name>/ (npz splits + manifest with sha256).
rule prepare_data:
    output:
        [f"{DATA}/{{dataset}}/{f}" for f in DATA_FILES],
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data_{{dataset}}.tsv"
    params:
        spec=spec("data"),
        data_root=lambda w, output: parent_dir(output[0], 2),
    wildcard_constraints:
        dataset="|".join(DATASET_NAMES),
    threads: stage_threads("prepare_data")
    resources:
        **res("prepare_data"),
    shell:
        "lopt prepare-data --config {CONFIGFILE} --dataset {wildcards.dataset} --data-root {params.data_root}"
