# Explain: one job per experiment/dataset/model/layer/method/shard -> one heatmap shard.


rule explain:
    input:
        image_list=lambda w: Paths.image_list(w.dataset),
        weights=lambda w: weights_input(w.model),
    output:
        Paths.heatmaps("{experiment}", "{dataset}", "{model}", "{layer}", "{method}", "{shard}"),
    params:
        # Only what changes the maps is a param, so editing one method reruns only its jobs.
        method=lambda w: method_spec(config, w.method),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(w.dataset, w.experiment),
        target=lambda w: experiment_target(w.experiment),
        top_k=lambda w: experiment_top_k(w.experiment),
        shard_size=config["shard_size"],
        batch_size=config["batch_size"],
        device=config["device"],
    log:
        Paths.log("explain", SHARD_JOB),
    benchmark:
        Paths.benchmark("explain", SHARD_JOB)
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
        "../workflow_scripts/explain.py"
