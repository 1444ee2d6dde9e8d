import torch

from vislib.data import DatasetRef
from vislib.jobs.sanity import sanity
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w, p = snakemake.wildcards, snakemake.params
    sanity(image_list=snakemake.input.image_list, n_images=p.n_images, method=p.method, model=p.model, layer=w.layer,
           dataset=DatasetRef(**p.dataset), target=p.target, steps=p.steps, device=p.device,
           labels={"experiment": w.experiment, "dataset": w.dataset, "model": w.model, "layer": w.layer,
                   "method": w.method},
           out=snakemake.output.table, maps_out=snakemake.output.maps)
