# Datasets: prepare each configured dataset, then checkpoint its image list (shard counts come from it).


rule prepare_dataset:
    output:
        Paths.prepared("{dataset}"),
    params:
        spec=lambda w: config["datasets"][w.dataset],
        root=lambda w: f"{DATA}/{w.dataset}",
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/runs/prepare_dataset/{dataset}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/prepare_dataset.py"


checkpoint image_list:
    input:
        Paths.prepared("{dataset}"),
    output:
        Paths.image_list("{dataset}"),
    params:
        spec=lambda w: dataset_spec(w.dataset),
    log:
        "logs/image_list/{dataset}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/image_list.py"
