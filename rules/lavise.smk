# LaViSE (docs/lavise.md): the seeded word table where asked, the layer's features of the training and the
# reference images, the explainer, each filter group named with words (+ figure), recall@k against baselines.


rule lavise_embeddings:
    input:
        Paths.prepared("{dataset}"),
    output:
        Paths.seeded_embeddings("{dataset}"),
    params:
        root=lambda w: Paths.dataset_root(w.dataset),
        splits=lambda w: [LAVISE["train_split"], dataset_spec(w.dataset)["split"]],
        dim=LAVISE["embedding_dim"],
        seed=LAVISE["embedding_seed"],
    log:
        Paths.log("lavise_embeddings", "{dataset}"),
    benchmark:
        Paths.benchmark("lavise_embeddings", "{dataset}")
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
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
        Paths.log("lavise_features", LAVISE_JOB),
    benchmark:
        Paths.benchmark("lavise_features", LAVISE_JOB)
    # A chain of one job at a time (features, training, inference): started late, it is the run's tail.
    priority: 20
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=scaled(4000),
        runtime=scaled(120),
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
        Paths.log("lavise_train", LAVISE_JOB),
    benchmark:
        Paths.benchmark("lavise_train", LAVISE_JOB)
    # A chain of one job at a time (features, training, inference): started late, it is the run's tail.
    priority: 20
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=scaled(4000),
        runtime=scaled(120),
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
            labels={"model": "{model}", "layer": "{layer}", "result": "filters of group {group}"},
        ),
    params:
        filters=lambda w: filter_groups(LAVISE)[int(w.group)],
        settings=subset(LAVISE, INFER_KEYS),
        model=lambda w: model_spec(w.model),
        device=config["device"],
    log:
        Paths.log("lavise_infer", LAVISE_GROUP_JOB),
    benchmark:
        Paths.benchmark("lavise_infer", LAVISE_GROUP_JOB)
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=scaled(4000),
        runtime=scaled(60),
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
            labels={"model": "{model}", "layer": "{layer}", "result": "recall@k"},
        ),
        words=Paths.lavise("{experiment}", "{model}", "{layer}", "words.parquet"),
    params:
        settings=subset(LAVISE, RECALL_KEYS),
    log:
        Paths.log("lavise_recall", LAVISE_JOB),
    benchmark:
        Paths.benchmark("lavise_recall", LAVISE_JOB)
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_recall.py"
