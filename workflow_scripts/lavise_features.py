import torch

from vislib.lavise.jobs import cache_job
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    cache_job(p.model, snakemake.wildcards.layer, p.dataset, p.settings, snakemake.input.image_list,
              snakemake.input.embeddings, p.device, snakemake.output[0])
