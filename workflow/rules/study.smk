# Estimator studies (configs/paper/*.yaml): one job per (method, seed), then the analysis.
#
# A run job gets every core (resources.study_run.cpus unset) so jobs never share the CPU:
# the wall-clock axis of the study's figures must measure one run, not contention.
# `--config quick=1` selects the study's CI-sized variant (results/<name>_quick).
METHODS = [m.name for m in CFG.methods]


rule study_run:
    input:
        data=[f for ds in CFG.datasets() for f in dataset_files(ds)],
    output:
        curve=f"{RESULTS}/runs/{{method}}/seed{{seed}}/curve.csv",
        theta=f"{RESULTS}/runs/{{method}}/seed{{seed}}/theta.npz",
    benchmark:
        f"{RESULTS}/benchmarks/run_{{method}}_seed{{seed}}.tsv"
    params:
        spec=lambda w: json.dumps(CFG.run_spec(CFG.method(w.method)), sort_keys=True),
        out=lambda w, output: parent_dir(output.curve),
        data_root=lambda w, input: data_root_flag(input.data),
    wildcard_constraints:
        method="|".join(METHODS),
        seed=r"\d+",
    threads: stage_threads("study_run")
    resources:
        **res("study_run"),
    shell:
        "lopt study-run --config {CONFIGFILE}{QUICK_FLAG}{params.data_root} --method {wildcards.method} "
        "--seed {wildcards.seed} --out {params.out} --quiet"


rule study_analyze:
    input:
        [f"{RESULTS}/runs/{m}/seed{s}/curve.csv" for m in METHODS for s in CFG.seed_list()],
    output:
        [f"{RESULTS}/{f}" for f in CFG.output_files()],
    benchmark:
        f"{RESULTS}/benchmarks/study_analyze.tsv"
    params:
        # what the figures and claims print besides the curves: title, reference, legend labels
        spec=spec("analysis", "claims", "description", "reference", "methods"),
        results=lambda w, input: parent_dir(input[0], 4),  # results/<name> from runs/<method>/seed<N>/curve.csv
    threads: stage_threads("study_analyze")
    resources:
        **res("study_analyze"),
    shell:
        "lopt study-analyze --config {CONFIGFILE}{QUICK_FLAG} --results {params.results}"


# PES/NRES variance vs truncations per episode at theta_0 (only with analysis.variance).
rule study_variance:
    input:
        data=[f for ds in CFG.datasets() for f in dataset_files(ds)],
    output:
        [f"{RESULTS}/{f}" for f in CFG.variance_files()],
    benchmark:
        f"{RESULTS}/benchmarks/study_variance.tsv"
    params:
        spec=spec("system", "data", "analysis", "seed_offset", "compute.precision"),  # noise keys from seed_offset
        results=lambda w, output: parent_dir(output[0], 2),  # results/<name> from figures/variance.png
        data_root=lambda w, input: data_root_flag(input.data),
    threads: stage_threads("study_variance")
    resources:
        **res("study_variance"),
    shell:
        "lopt variance --config {CONFIGFILE}{QUICK_FLAG}{params.data_root} --out {params.results}"
