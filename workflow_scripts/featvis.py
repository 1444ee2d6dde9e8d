import torch

from vislib.data import DatasetRef
from vislib.jobs.featvis import featvis
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w, p = snakemake.wildcards, snakemake.params
    featvis(label=w.method, method=p.method, model=p.model, layer=w.layer, shard=int(w.shard), settings=p.settings,
            image_list=snakemake.input.image_list, dataset=DatasetRef(**p.dataset), seed=p.seed, device=p.device,
            out=snakemake.output[0])
