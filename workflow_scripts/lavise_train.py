import torch

from vislib.lavise.jobs import train_job
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    train_job(snakemake.input.features, snakemake.input.embeddings, snakemake.params.settings,
              snakemake.params.device, snakemake.output.checkpoint, snakemake.output.history)
