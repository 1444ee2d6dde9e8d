# Evaluate: score one heatmap shard with the experiment's metrics -> one Parquet shard.


rule evaluate:
    input:
        heatmaps=Paths.heatmaps("{experiment}", "{dataset}", "{model}", "{layer}", "{method}", "{shard}"),
        weights=lambda w: weights_input(w.model),
    output:
        Paths.metric_shard("{experiment}", "{dataset}", "{model}", "{layer}", "{method}", "{shard}"),
    params:
        metrics=lambda w: {m: metric_spec(config, m) for m in config["experiments"][w.experiment]["metrics"]},
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset, w.experiment),
        target=lambda w: experiment_target(w.experiment),
        batch_size=config["batch_size"],
        device=config["device"],
    log:
        Paths.log("evaluate", SHARD_JOB),
    benchmark:
        Paths.benchmark("evaluate", SHARD_JOB)
    threads: config["job_threads"]
    resources:
        gpu=GPU,
        # SLURM's --cpus-per-task: the profile's default of 1 would otherwise win over threads.
        cpus_per_task=config["job_threads"],
        # Retries (profiles/slurm: retries) ask for more memory and time each attempt.
        mem_mb=scaled(3000),
        runtime=scaled(shard_minutes),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/evaluate.py"
