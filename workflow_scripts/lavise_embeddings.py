from vislib.lavise.jobs import write_seeded_table
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    write_seeded_table(p.root, p.splits, p.dim, p.seed, snakemake.output[0])
