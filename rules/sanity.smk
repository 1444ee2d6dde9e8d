# Sanity check: cascading model randomization per method (re-runs the methods), and its curve figure;
# also the evaluation figures every experiment gets beside its tables (metric bars, paired comparisons).


rule sanity:
    input:
        image_list=lambda w: Paths.image_list(w.dataset),
        weights=lambda w: weights_input(w.model),
    output:
        table=Paths.sanity_table("{experiment}", "{dataset}", "{model}", "{layer}", "{method}"),
        maps=Paths.sanity_maps("{experiment}", "{dataset}", "{model}", "{layer}", "{method}"),
    params:
        method=lambda w: sanity_method(w.method),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset, w.experiment),
        target=lambda w: experiment_target(w.experiment),
        n_images=lambda w: sanity_settings(w.experiment).get("images", 8),
        steps=lambda w: sanity_settings(w.experiment).get("steps", 6),
        device=config["device"],
    log:
        Paths.log("sanity", "{experiment}/{dataset}/{model}/{layer}/{method}"),
    benchmark:
        Paths.benchmark("sanity", "{experiment}/{dataset}/{model}/{layer}/{method}")
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=scaled(3000),
        runtime=scaled(30),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/sanity.py"


rule sanity_figure:
    input:
        tables=lambda w: sanity_tables(w.experiment),
        maps=lambda w: sanity_tables(w.experiment, Paths.sanity_maps),
    output:
        curves=report(
            Paths.figure("{experiment}", "sanity.png"),
            caption="../report/sanity.rst",
            category="{experiment}",
            subcategory="Sanity check",
            labels={"figure": "rank correlation along the cascade"},
        ),
        strip=report(
            Paths.figure("{experiment}", "sanity_maps.png"),
            caption="../report/sanity_maps.rst",
            category="{experiment}",
            subcategory="Sanity check",
            labels={"figure": "maps along the cascade"},
        ),
    log:
        Paths.log("sanity_figure", "{experiment}"),
    benchmark:
        Paths.benchmark("sanity_figure", "{experiment}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/sanity_figure.py"


rule metric_bars:
    input:
        Paths.summary("{experiment}", "summary.parquet"),
    output:
        report(
            Paths.figure("{experiment}", "metrics.png"),
            caption="../report/metric_bars.rst",
            category="{experiment}",
            subcategory="Metrics",
            labels={"figure": "metric means with 95% intervals"},
        ),
    log:
        Paths.log("metric_bars", "{experiment}"),
    benchmark:
        Paths.benchmark("metric_bars", "{experiment}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/metric_bars.py"


rule comparison_figure:
    input:
        Paths.summary("{experiment}", "comparisons.parquet"),
    output:
        report(
            Paths.figure("{experiment}", "comparisons.png"),
            caption="../report/comparison_figure.rst",
            category="{experiment}",
            subcategory="Metrics",
            labels={"figure": "paired method comparisons"},
        ),
    log:
        Paths.log("comparison_figure", "{experiment}"),
    benchmark:
        Paths.benchmark("comparison_figure", "{experiment}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/comparison_figure.py"


rule perturbation_curves:
    input:
        Paths.summary("{experiment}", "metrics.parquet"),
    output:
        report(
            Paths.figure("{experiment}", "perturbation_curves.png"),
            caption="../report/perturbation_curves.rst",
            category="{experiment}",
            subcategory="Metrics",
            labels={"figure": "deletion and insertion curves"},
        ),
    log:
        Paths.log("perturbation_curves", "{experiment}"),
    benchmark:
        Paths.benchmark("perturbation_curves", "{experiment}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/perturbation_curves.py"
