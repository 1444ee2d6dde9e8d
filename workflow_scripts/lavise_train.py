import torch

from vislib.jobs.lavise import lavise_train
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, out = snakemake.params, snakemake.output
    lavise_train(features_dir=snakemake.input.features, embeddings=snakemake.input.embeddings, settings=p.settings,
                 device=p.device, checkpoint=out.checkpoint, history=out.history, model=p.model)
