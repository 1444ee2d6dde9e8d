from vislib.jobs.featvis import featvis_scatter
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    featvis_scatter(shards=list(snakemake.input), out=snakemake.output[0],
                    title=f"{w.experiment}: {w.model} / {w.layer} / {w.method}")
