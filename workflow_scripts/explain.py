import torch

from vislib.jobs import explain
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    explain(snakemake.input.image_list, int(snakemake.wildcards.shard), p.shard_size, p.method, p.model,
            snakemake.wildcards.layer, p.dataset, p.target, p.batch_size, p.device, snakemake.output[0])
