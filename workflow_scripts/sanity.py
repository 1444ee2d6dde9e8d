import torch

from vislib.metrics.sanity import sanity_job
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w = snakemake.wildcards
    labels = {"experiment": w.experiment, "dataset": w.dataset, "model": w.model, "layer": w.layer,
              "method": w.method}
    sanity_job(snakemake.input.image_list, snakemake.params.n_images, snakemake.params.method,
               snakemake.params.model, w.layer, snakemake.params.dataset, snakemake.params.target,
               snakemake.params.steps, snakemake.params.device, labels, snakemake.output[0])
