# Aggregate: all metric shards of an experiment -> metrics.parquet, summary.parquet, comparisons.parquet,
# summary.md; figure grids.


rule aggregate:
    input:
        experiment_metric_shards,
    output:
        metrics=Paths.summary("{experiment}", "metrics.parquet"),
        summary=Paths.summary("{experiment}", "summary.parquet"),
        summary_md=Paths.summary("{experiment}", "summary.md"),
        summary_html=report(
            Paths.summary("{experiment}", "summary.html"),
            caption="../report/summary.rst",
            category="{experiment}",
            subcategory="Metrics",
            labels={"figure": "summary table: mean, 95% interval, n"},
        ),
        comparisons=Paths.summary("{experiment}", "comparisons.parquet"),
    params:
        experiment_config=lambda w: experiment_config(w.experiment),
        device=config["device"],
    log:
        Paths.log("aggregate", "{experiment}"),
    benchmark:
        Paths.benchmark("aggregate", "{experiment}")
    resources:
        mem_mb=scaled(2000),
        # BCa intervals and paired comparisons: under a second per 50,000-image group or method pair on one core.
        runtime=scaled(60),
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
            labels={"model": "{model}", "layer": "{layer}", "figure": "maps of every method"},
        ),
    params:
        methods=lambda w: {m: method_spec(config, m) for m in config["experiments"][w.experiment]["methods"]},
        n_images=lambda w: config["experiments"][w.experiment].get("figure_images", 8),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset, w.experiment),
    log:
        Paths.log("figure_grid", "{experiment}/{dataset}/{model}/{layer}"),
    benchmark:
        Paths.benchmark("figure_grid", "{experiment}/{dataset}/{model}/{layer}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/figure_grid.py"
