from vislib.jobs.figures import sanity_figure
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    sanity_figure(tables=list(snakemake.input.tables), maps=list(snakemake.input.maps), out=snakemake.output.curves,
                  strip_out=snakemake.output.strip,
                  title=f"{snakemake.wildcards.experiment}: cascading model randomization")
