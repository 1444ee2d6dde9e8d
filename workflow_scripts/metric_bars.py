from vislib.aggregate import metric_bar_chart
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    metric_bar_chart(snakemake.input[0], snakemake.output[0], f"{snakemake.wildcards.experiment}: metrics")
