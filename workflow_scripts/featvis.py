import torch

from vislib.featvis.jobs import featvis_shard
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, w = snakemake.params, snakemake.wildcards
    featvis_shard(w.method, p.method, p.model, w.layer, int(w.shard), p.settings, snakemake.input.image_list,
                  p.dataset, p.seed, p.device, snakemake.output[0])
