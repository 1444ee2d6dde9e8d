# Sanity check: cascading model randomization per method (re-runs the methods), and its curve figure;
# also the evaluation figures every experiment gets beside its tables.


rule sanity:
    input:
        image_list=lambda w: Paths.image_list(w.dataset),
        weights=lambda w: weights_input(w.model),
    output:
        "results/{experiment}/sanity/{dataset}/{model}/{layer}/{method}.parquet",
    params:
        method=lambda w: sanity_method(w.method),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset),
        target=lambda w: config["experiments"][w.experiment].get("target", "label"),
        n_images=lambda w: sanity_settings(w.experiment).get("images", 8),
        steps=lambda w: sanity_settings(w.experiment).get("steps", 6),
        device=config["device"],
    log:
        "logs/sanity/{experiment}/{dataset}/{model}/{layer}/{method}.log",
    benchmark:
        "benchmarks/runs/sanity/{experiment}/{dataset}/{model}/{layer}/{method}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/sanity.py"


rule sanity_figure:
    input:
        lambda w: sanity_tables(w.experiment),
    output:
        report(
            "results/{experiment}/figures/sanity.png",
            caption="../report/sanity.rst",
            category="{experiment}",
            subcategory="Sanity check",
        ),
    log:
        "logs/sanity_figure/{experiment}.log",
    benchmark:
        "benchmarks/runs/sanity_figure/{experiment}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/sanity_figure.py"


rule metric_bars:
    input:
        Paths.summary("{experiment}", "summary.parquet"),
    output:
        report(
            "results/{experiment}/figures/metrics.png",
            caption="../report/metric_bars.rst",
            category="{experiment}",
            subcategory="Metrics",
        ),
    log:
        "logs/metric_bars/{experiment}.log",
    benchmark:
        "benchmarks/runs/metric_bars/{experiment}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/metric_bars.py"
