# Datasets: prepare each configured dataset, then checkpoint its image list (shard counts come from it);
# downloads of pretrained weights and GloVe.


rule prepare_dataset:
    output:
        Paths.prepared("{dataset}"),
    params:
        kind=lambda w: config["datasets"][w.dataset]["kind"],
        params=lambda w: config["datasets"][w.dataset].get("params", {}),
        root=lambda w: Paths.dataset_root(w.dataset),
        # A user's images are labelled with the classes of the models evaluated on them.
        model_classes=lambda w: dataset_model_classes(config, w.dataset),
    log:
        Paths.log("prepare_dataset", "{dataset}"),
    benchmark:
        Paths.benchmark("prepare_dataset", "{dataset}")
    resources:
        mem_mb=scaled(lambda w: prepare_resources(w.dataset)[0]),
        runtime=scaled(lambda w: prepare_resources(w.dataset)[1]),
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
        dataset=lambda w: dataset_spec(w.dataset),
        limit=lambda w: config["datasets"][w.dataset].get("limit"),
    log:
        Paths.log("image_list", "{dataset}"),
    benchmark:
        Paths.benchmark("image_list", "{dataset}")
    resources:
        # On SLURM the job's memory also holds the Snakemake process running it, which has imported torch
        # with this workflow (about 0.6 GB): 1000 MB was killed on a memory-enforcing cluster.
        mem_mb=scaled(2000),
        runtime=scaled(5),
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
        Paths.log("fetch_weights", "{file}"),
    benchmark:
        Paths.benchmark("fetch_weights", "{file}")
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
        Paths.log("glove", "glove"),
    benchmark:
        Paths.benchmark("glove", "glove")
    retries: 1
    resources:
        mem_mb=500,
        runtime=120,
    run:
        from vislib.data.download import fetch
        from vislib.runlog import log_to

        with log_to(log[0]):
            fetch(GLOVE_URL, f"{GLOVE_DIR}/downloads", GLOVE_DIR, progress=False)
