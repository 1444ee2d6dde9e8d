# LaViSE (docs/lavise.md): the seeded word table where asked, VG's reproduction tokens where asked, the layer's
# features of the training and the reference images, the explainer, each filter group named with words (+ figure),
# recall@k against baselines.


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


rule lavise_vg_concepts:
    # Only with `concepts: first_token`: VG's raw objects.json tokenised as the reproduction does.
    input:
        prepared=lambda w: Paths.prepared(experiment_dataset(w.experiment)),
        embeddings=lambda w: lavise_embeddings(w.experiment),
    output:
        concepts=Paths.lavise_experiment("{experiment}", "vg_concepts.json"),
        stats=Paths.lavise_experiment("{experiment}", "vg_concepts_stats.json"),
    params:
        root=lambda w: Paths.dataset_root(experiment_dataset(w.experiment)),
        settings=subset(LAVISE, CONCEPT_KEYS),
    log:
        Paths.log("lavise_vg_concepts", "{experiment}"),
    benchmark:
        Paths.benchmark("lavise_vg_concepts", "{experiment}")
    resources:
        # objects.json is about 0.4 GB of JSON, parsed in memory.
        mem_mb=scaled(16000),
        runtime=scaled(30),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_vg_concepts.py"


rule lavise_features:
    input:
        unpack(lambda w: lavise_vg_concepts_input(w.experiment)),
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
        # Per-box VG targets and a reference set of whole datasets hold millions of objects in memory.
        mem_mb=scaled(LAVISE_MEM_MB),
        runtime=scaled(120),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/lavise_features.py"


rule lavise_train:
    input:
        features=Paths.lavise("{experiment}", "{model}", "{layer}", "features"),
        embeddings=lambda w: lavise_embeddings(w.experiment),
        # With `augment` the backbone runs on augmented training images every epoch.
        weights=lambda w: weights_input(w.model) if LAVISE["augment"] else [],
    output:
        # An interrupted run leaves explainer.pt.partial beside the output; the rerun resumes from it.
        checkpoint=Paths.lavise("{experiment}", "{model}", "{layer}", "explainer.pt"),
        history=Paths.lavise("{experiment}", "{model}", "{layer}", "training.csv"),
    params:
        settings=train_job_settings(LAVISE),
        model=lambda w: model_spec(w.model) if LAVISE["augment"] else None,
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
        mem_mb=scaled(LAVISE_MEM_MB),
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
        mem_mb=scaled(LAVISE_MEM_MB),
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
