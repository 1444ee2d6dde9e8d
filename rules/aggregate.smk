# Aggregate: all metric shards of an experiment -> metrics.parquet, summary.parquet, summary.md; figure grids.


rule aggregate:
    input:
        experiment_metric_shards,
    output:
        metrics=Paths.summary("{experiment}", "metrics.parquet"),
        summary=Paths.summary("{experiment}", "summary.parquet"),
        summary_md=report(
            Paths.summary("{experiment}", "summary.md"),
            caption="../report/summary.rst",
            category="{experiment}",
            subcategory="Metrics",
        ),
    params:
        experiment_config=lambda w: experiment_config(w.experiment),
        device=config["device"],
    log:
        "logs/aggregate/{experiment}.log",
    benchmark:
        "benchmarks/runs/aggregate/{experiment}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/aggregate.py"


rule figure_grid:
    input:
        heatmaps=grid_heatmaps,
        weights=lambda w: weights_input(w.model),
    output:
        report(
            Paths.grid("{experiment}", "{dataset}", "{model}", "{layer}"),
            caption="../report/grid.rst",
            category="{experiment}",
            subcategory="Figures",
        ),
    params:
        methods=lambda w: config["experiments"][w.experiment]["methods"],
        n_images=lambda w: config["experiments"][w.experiment].get("figure_images", 8),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset),
    log:
        "logs/figure_grid/{experiment}/{dataset}/{model}/{layer}.log",
    benchmark:
        "benchmarks/runs/figure_grid/{experiment}/{dataset}/{model}/{layer}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/figure_grid.py"
