# Feature visualization: one job per experiment/model/layer/method/unit shard -> synthesised images with
# their metadata (.npz); one grid per experiment/model/layer/method for the report, and a cluster scatter for
# class-agnostic methods with `scatter: true`.


rule featvis:
    input:
        image_list=lambda w: Paths.image_list(experiment_dataset(w.experiment)),
        weights=lambda w: weights_input(w.model),
    output:
        Paths.featvis_shard("{experiment}", "{model}", "{layer}", "{method}", "{shard}"),
    params:
        # Only what changes the images is a param, so editing one method reruns only its jobs.
        method=lambda w: featvis_spec(config, w.method),
        settings=lambda w: featvis_settings(w.experiment, w.method),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(experiment_dataset(w.experiment), w.experiment),
        seed=config["seed"],
        device=config["device"],
    log:
        Paths.log("featvis", FEATVIS_SHARD_JOB),
    benchmark:
        Paths.benchmark("featvis", FEATVIS_SHARD_JOB)
    threads: 1
    resources:
        gpu=GPU,
        # Retries (profiles/slurm: retries) ask for more memory and time each attempt.
        mem_mb=scaled(3000),
        runtime=scaled(60),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/featvis.py"


rule featvis_grid:
    input:
        featvis_shards,
    output:
        report(
            Paths.featvis_grid("{experiment}", "{model}", "{layer}", "{method}"),
            caption="../report/featvis.rst",
            category="{experiment}",
            subcategory="Feature visualization",
            labels={"model": "{model}", "layer": "{layer}", "method": "{method}"},
        ),
    log:
        Paths.log("featvis_grid", FEATVIS_JOB),
    benchmark:
        Paths.benchmark("featvis_grid", FEATVIS_JOB)
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/featvis_grid.py"


rule featvis_scatter:
    input:
        featvis_shards,
    output:
        report(
            Paths.featvis_scatter("{experiment}", "{model}", "{layer}", "{method}"),
            caption="../report/featvis_scatter.rst",
            category="{experiment}",
            subcategory="Feature visualization",
            labels={"model": "{model}", "layer": "{layer}", "method": "{method}: cluster scatter"},
        ),
    log:
        Paths.log("featvis_scatter", FEATVIS_JOB),
    benchmark:
        Paths.benchmark("featvis_scatter", FEATVIS_JOB)
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/featvis_scatter.py"
