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
        dataset=lambda w: dataset_spec(w.dataset),
        target=lambda w: config["experiments"][w.experiment].get("target", "label"),
        device=config["device"],
    log:
        "logs/evaluate/{experiment}/{dataset}/{model}/{layer}/{method}/shard_{shard}.log",
    benchmark:
        "benchmarks/runs/evaluate/{experiment}/{dataset}/{model}/{layer}/{method}/shard_{shard}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        # Retries (profiles/slurm: retries) ask for more memory and time each attempt.
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=lambda wildcards, attempt: shard_runtime(attempt),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/evaluate.py"
