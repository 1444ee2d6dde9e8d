import torch

from vislib.data import DatasetRef
from vislib.jobs.lavise import lavise_features
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p = snakemake.params
    lavise_features(model=p.model, layer=snakemake.wildcards.layer, dataset=DatasetRef(**p.dataset),
                    settings=p.settings, image_list=snakemake.input.image_list, embeddings=snakemake.input.embeddings,
                    device=p.device, out_dir=snakemake.output[0],
                    vg_concepts=snakemake.input.get("vg_concepts"))
