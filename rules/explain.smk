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
        dataset=lambda w: dataset_spec(w.dataset),
        target=lambda w: config["experiments"][w.experiment].get("target", "label"),
        shard_size=config["shard_size"],
        batch_size=config["batch_size"],
        device=config["device"],
    log:
        "logs/explain/{experiment}/{dataset}/{model}/{layer}/{method}/shard_{shard}.log",
    benchmark:
        "benchmarks/runs/explain/{experiment}/{dataset}/{model}/{layer}/{method}/shard_{shard}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        # Retries (profiles/slurm: retries) ask for more memory and time each attempt.
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=lambda wildcards, attempt: shard_runtime(attempt),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/explain.py"
