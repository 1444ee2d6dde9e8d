# Models: train those with a `train:` block (the demo net on shapes); others load pretrained or random weights.


rule train_model:
    input:
        lambda w: Paths.prepared(config["models"][w.model]["train"]["dataset"]),
    output:
        checkpoint=Paths.checkpoint("{model}"),
        history=Paths.training("{model}"),
        curve=report(
            Paths.training_curve("{model}"),
            caption="../report/training.rst",
            category="Models",
            labels={"model": "{model}", "figure": "training curve"},
        ),
    params:
        arch=lambda w: config["models"][w.model]["arch"],
        train=lambda w: config["models"][w.model]["train"],
        dataset=lambda w: dataset_spec(config["models"][w.model]["train"]["dataset"]),
        device=config["device"],
    log:
        Paths.log("train_model", "{model}"),
    benchmark:
        Paths.benchmark("train_model", "{model}")
    # Most jobs wait for the trained model: start it before the jobs that do not need it. Half the cores, so
    # that it fits beside a running one-core job: asking for all of them starves it while the photos jobs,
    # which need no training, keep one core busy.
    priority: 50
    threads: max(1, workflow.cores // 2)
    resources:
        gpu=GPU,
        # Retries (profiles/slurm: retries) ask for more memory and time each attempt.
        mem_mb=scaled(4000),
        runtime=scaled(60),
    conda:
        "../envs/vislib.yaml"
    script:
        "../workflow_scripts/train_model.py"
