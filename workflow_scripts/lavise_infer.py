import torch

from vislib.lavise.jobs import infer_job
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, out = snakemake.params, snakemake.output
    infer_job(snakemake.input.features, snakemake.input.checkpoint, snakemake.input.embeddings, p.filters,
              p.settings, p.model, snakemake.wildcards.experiment, p.device, out.analysis, out.words, out.figure)
