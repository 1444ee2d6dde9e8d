from vislib.jobs.featvis import featvis_grid
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    featvis_grid(shards=list(snakemake.input), out=snakemake.output[0],
                 title=f"{w.experiment}: {w.model} / {w.layer} / {w.method}")
