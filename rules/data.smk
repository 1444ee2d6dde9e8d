# Datasets: prepare each configured dataset, then checkpoint its image list (shard counts come from it).

# (mem_mb, runtime in minutes) of the prepare job of real datasets: downloads, extraction, JSON parsing.
PREPARE_RESOURCES = {"coco": (8000, 12 * 60), "vg": (24000, 24 * 60), "imagenet_val": (4000, 3 * 60)}


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
        mem_mb=lambda w, attempt: PREPARE_RESOURCES.get(config["datasets"][w.dataset]["kind"], (2000, 30))[0] * attempt,
        runtime=lambda w, attempt: PREPARE_RESOURCES.get(config["datasets"][w.dataset]["kind"], (2000, 30))[1] * attempt,
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
    benchmark:
        "benchmarks/runs/image_list/{dataset}.tsv"
    resources:
        # On SLURM the job's memory also holds the Snakemake process running it, which has imported torch
        # with this workflow (about 0.6 GB): 1000 MB was killed on a memory-enforcing cluster.
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/image_list.py"


# Downloads run where Snakemake runs, never as cluster jobs: compute nodes often have no internet access.
localrules:
    weights,
    fetch_weights,
    glove,


# Pretrained torchvision weights: `snakemake weights` fetches every configured one into the cache
# (hash-checked against the sha256 prefix in the file name); jobs then load them offline.
rule weights:
    input:
        [f"{WEIGHTS_CACHE}/{name}" for name in pretrained_weights()],


rule fetch_weights:
    output:
        f"{WEIGHTS_CACHE}/{{file}}",
    params:
        url=lambda w: pretrained_weights()[w.file],
    log:
        "logs/fetch_weights/{file}.log",
    benchmark:
        "benchmarks/runs/fetch_weights/{file}.tsv"
    retries: 1
    resources:
        mem_mb=500,
        runtime=60,
    run:
        from vislib.data.download import download, torchvision_hash_prefix
        from vislib.runlog import log_to

        with log_to(log[0]):
            download(params.url, output[0], sha256_prefix=torchvision_hash_prefix(params.url), progress=False)


# GloVe vectors for LaViSE: `snakemake glove` downloads glove.6B.zip and extracts the 300-d file.
GLOVE_URL = "https://nlp.stanford.edu/data/glove.6B.zip"
GLOVE_DIR = f"{DATA}/glove"


rule glove:
    output:
        f"{GLOVE_DIR}/glove.6B.300d.txt",
    log:
        "logs/glove.log",
    benchmark:
        "benchmarks/runs/glove.tsv"
    retries: 1
    resources:
        mem_mb=500,
        runtime=120,
    run:
        from vislib.data.download import fetch
        from vislib.runlog import log_to

        with log_to(log[0]):
            fetch(GLOVE_URL, f"{GLOVE_DIR}/downloads", GLOVE_DIR, progress=False)
