import torch

from vislib.data import DatasetRef
from vislib.jobs.explain import explain
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w, p = snakemake.wildcards, snakemake.params
    explain(image_list=snakemake.input.image_list, shard=int(w.shard), shard_size=p.shard_size, method=p.method,
            model=p.model, layer=w.layer, dataset=DatasetRef(**p.dataset), target=p.target, batch_size=p.batch_size,
            device=p.device, out=snakemake.output[0], top_k=p.top_k, decode_threads=snakemake.threads)
