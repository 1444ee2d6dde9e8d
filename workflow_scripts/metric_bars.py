from vislib.jobs.figures import metric_bars
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    metric_bars(summary=snakemake.input[0], out=snakemake.output[0], title=f"{snakemake.wildcards.experiment}: metrics")
