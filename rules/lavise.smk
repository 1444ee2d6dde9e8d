# LaViSE (docs/lavise.md): the seeded word table where asked, the layer's features of the training and the
# reference images, the explainer, each filter group named with words (+ figure), recall@k against baselines.
rule lavise_embeddings:
    input:
        Paths.prepared("{dataset}"),
    output:
        Paths.seeded_embeddings("{dataset}"),
    params:
        root=lambda w: f"{DATA}/{w.dataset}",
        splits=lambda w: [LAVISE["train_split"], dataset_spec(w.dataset)["split"]],
        dim=LAVISE["embedding_dim"],
        seed=LAVISE["embedding_seed"],
    log:
        "logs/lavise_embeddings/{dataset}.log",
    benchmark:
        "benchmarks/runs/lavise_embeddings/{dataset}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_embeddings.py"


rule lavise_features:
    input:
        prepared=lambda w: Paths.prepared(experiment_dataset(w.experiment)),
        image_list=lambda w: Paths.image_list(experiment_dataset(w.experiment)),
        embeddings=lambda w: lavise_embeddings(w.experiment),
        weights=lambda w: weights_input(w.model),
    output:
        directory(Paths.lavise("{experiment}", "{model}", "{layer}", "features")),
    params:
        settings=subset(LAVISE, FEATURE_KEYS),
        model=lambda w: model_spec(w.model),
        dataset=lambda w: dataset_spec(experiment_dataset(w.experiment)),
        device=config["device"],
    log:
        "logs/lavise_features/{experiment}/{model}/{layer}.log",
    benchmark:
        "benchmarks/runs/lavise_features/{experiment}/{model}/{layer}.tsv"
    # A chain of one job at a time (features, training, inference): started late, it is the run's tail.
    priority: 20
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_features.py"


rule lavise_train:
    input:
        features=Paths.lavise("{experiment}", "{model}", "{layer}", "features"),
        embeddings=lambda w: lavise_embeddings(w.experiment),
    output:
        # An interrupted run leaves explainer.pt.partial beside the output; the rerun resumes from it.
        checkpoint=Paths.lavise("{experiment}", "{model}", "{layer}", "explainer.pt"),
        history=Paths.lavise("{experiment}", "{model}", "{layer}", "training.csv"),
    params:
        settings=subset(LAVISE, TRAIN_KEYS),
        device=config["device"],
    log:
        "logs/lavise_train/{experiment}/{model}/{layer}.log",
    benchmark:
        "benchmarks/runs/lavise_train/{experiment}/{model}/{layer}.tsv"
    # A chain of one job at a time (features, training, inference): started late, it is the run's tail.
    priority: 20
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_train.py"


rule lavise_infer:
    input:
        features=Paths.lavise("{experiment}", "{model}", "{layer}", "features"),
        checkpoint=Paths.lavise("{experiment}", "{model}", "{layer}", "explainer.pt"),
        embeddings=lambda w: lavise_embeddings(w.experiment),
        weights=lambda w: weights_input(w.model),
    output:
        analysis=Paths.lavise_group("{experiment}", "{model}", "{layer}", "{group}", "analysis.npz"),
        words=Paths.lavise_group("{experiment}", "{model}", "{layer}", "{group}", "words.parquet"),
        figure=report(
            Paths.lavise_group("{experiment}", "{model}", "{layer}", "{group}", "filters.png"),
            caption="../report/lavise_filters.rst",
            category="{experiment}",
            subcategory="LaViSE",
        ),
    params:
        filters=lambda w: filter_groups(LAVISE)[int(w.group)],
        settings=subset(LAVISE, INFER_KEYS),
        model=lambda w: model_spec(w.model),
        device=config["device"],
    log:
        "logs/lavise_infer/{experiment}/{model}/{layer}/group_{group}.log",
    benchmark:
        "benchmarks/runs/lavise_infer/{experiment}/{model}/{layer}/group_{group}.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_infer.py"


rule lavise_recall:
    input:
        analyses=lambda w: lavise_groups(w, "analysis.npz"),
        words=lambda w: lavise_groups(w, "words.parquet"),
    output:
        recall=Paths.lavise("{experiment}", "{model}", "{layer}", "recall.parquet"),
        markdown=report(
            Paths.lavise("{experiment}", "{model}", "{layer}", "recall.md"),
            caption="../report/lavise_recall.rst",
            category="{experiment}",
            subcategory="LaViSE",
        ),
        words=Paths.lavise("{experiment}", "{model}", "{layer}", "words.parquet"),
    params:
        settings=subset(LAVISE, RECALL_KEYS),
    log:
        "logs/lavise_recall/{experiment}/{model}/{layer}.log",
    benchmark:
        "benchmarks/runs/lavise_recall/{experiment}/{model}/{layer}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_recall.py"
