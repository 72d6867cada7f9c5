# Stage 4: figures and tables from result files only (no training code runs here).
rule analyze:
    input:
        metrics=f"{RESULTS}/meta/metrics.csv",
        card=f"{RESULTS}/meta/model_card.md",
        curves=expand(f"{RESULTS}/eval/{{task}}/curves.csv", task=EVAL_TASKS),
        summaries=expand(f"{RESULTS}/eval/{{task}}/summary.csv", task=EVAL_TASKS),
        task_metrics=expand(f"{RESULTS}/eval/{{task}}/metrics.csv", task=EVAL_TASKS),
        # committed output of benchmarks/lopt_overhead.py; local(): read from the source
        # tree, not from a cluster's default storage
        tradeoffs=local("benchmarks/lopt_overhead.csv"),
        # num_meta_seeds > 1: every other meta-seed's evaluations (tables/meta_seeds.md)
        seed_summaries=expand(f"{META_SEEDS_DIR}/seed{{s}}/eval/{{task}}/summary.csv", s=META_SEEDS, task=EVAL_TASKS),
        seed_metrics=expand(f"{META_SEEDS_DIR}/seed{{s}}/eval/{{task}}/metrics.csv", s=META_SEEDS, task=EVAL_TASKS),
    output:
        meta=report(f"{RESULTS}/figures/meta_training.png", caption="../report/meta_training.rst", category="Meta-training"),
        curves=report(f"{RESULTS}/figures/eval_curves.png", caption="../report/eval_curves.rst", category="Evaluation"),
        table=report(f"{RESULTS}/tables/final_losses.md", caption="../report/final_losses.rst", category="Evaluation"),
        summary=f"{RESULTS}/tables/summary.csv",
        generalization=report(f"{RESULTS}/tables/generalization.md", caption="../report/generalization.rst", category="Evaluation"),
        generalization_figure=report(f"{RESULTS}/figures/generalization.png", caption="../report/generalization.rst", category="Evaluation"),
        across=report(f"{RESULTS}/tables/across_tasks.md", caption="../report/across_tasks.rst", category="Evaluation"),
        across_latex=f"{RESULTS}/tables/across_tasks.tex",
        latex=f"{RESULTS}/tables/final_losses.tex",
        task_metrics=f"{RESULTS}/tables/metrics.csv",
        model_card=report(f"{RESULTS}/model_card.md", caption="../report/model_card.rst", category="Learned optimizer"),
        speedups=report(f"{RESULTS}/figures/speedups.png", caption="../report/across_tasks.rst", category="Evaluation"),
        tradeoffs=report(f"{RESULTS}/tables/tradeoffs.md", caption="../report/tradeoffs.rst", category="Learned optimizers"),
        **({
            "meta_seeds": report(f"{RESULTS}/tables/meta_seeds.md", caption="../report/meta_seeds.rst", category="Evaluation"),
            "meta_seeds_csv": f"{RESULTS}/tables/meta_seeds.csv",
            "meta_seeds_figure": report(f"{RESULTS}/figures/meta_seeds.png", caption="../report/meta_seeds.rst", category="Evaluation"),
        } if META_SEEDS else {}),
    benchmark:
        f"{RESULTS}/benchmarks/analyze.tsv"
    params:
        spec=spec("analysis", "evaluation"),
        results=lambda w, input: parent_dir(input.metrics, 2),  # results/<name>, as this job sees it
    threads: stage_threads("analyze")
    resources:
        **res("analyze"),
    shell:
        "lopt analyze --config {CONFIGFILE} --results {params.results} --tradeoffs {input.tradeoffs}"
