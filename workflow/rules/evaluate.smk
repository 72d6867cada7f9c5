# Stage 3: evaluate the learned optimizer and LR-tuned baselines on one held-out task.
rule evaluate:
    input:
        params=f"{RESULTS}/meta/meta_params.npz",
        params_meta=f"{RESULTS}/meta/meta_params.npz.json",  # read with it, from the same folder
        data=lambda w: dataset_files(eval_task_dataset(w.task)),
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
        data_root=lambda w, input: data_root_flag(input.data),
    wildcard_constraints:
        task="|".join(EVAL_TASKS),
    threads: stage_threads("evaluate")
    resources:
        **res("evaluate"),
    shell:
        "lopt evaluate --config {CONFIGFILE}{params.data_root} --task {wildcards.task} "
        "--checkpoint {input.params} --out {params.out} --quiet"
