from vislib.jobs.lavise import lavise_embeddings
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    lavise_embeddings(root=p.root, splits=p.splits, dim=p.dim, seed=p.seed, out=snakemake.output[0])
