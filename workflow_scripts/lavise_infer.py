import torch

from vislib.jobs.lavise import lavise_infer
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, out = snakemake.params, snakemake.output
    lavise_infer(features_dir=snakemake.input.features, checkpoint=snakemake.input.checkpoint,
                 embeddings=snakemake.input.embeddings, filters=p.filters, settings=p.settings, model=p.model,
                 experiment=snakemake.wildcards.experiment, device=p.device, analysis_out=out.analysis,
                 words_out=out.words, figure_out=out.figure)
