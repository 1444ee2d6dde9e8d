import torch

from vislib.jobs import train_model
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    train_model(snakemake.params.arch, snakemake.params.train, snakemake.params.dataset, snakemake.params.device,
                snakemake.output.checkpoint, snakemake.output.history, snakemake.output.curve)
