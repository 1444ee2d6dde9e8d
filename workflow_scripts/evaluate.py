import torch

from vislib.jobs import evaluate
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w = snakemake.wildcards
    labels = {"experiment": w.experiment, "dataset": w.dataset, "model": w.model, "layer": w.layer,
              "method": w.method, "target_mode": snakemake.params.target}
    evaluate(snakemake.input.heatmaps, snakemake.params.metrics, snakemake.params.model, snakemake.params.dataset,
             labels, snakemake.params.device, snakemake.output[0])
