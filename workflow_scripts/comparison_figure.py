from vislib.jobs.figures import comparison_figure
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    comparison_figure(comparisons=snakemake.input[0], out=snakemake.output[0],
                      title=f"{snakemake.wildcards.experiment}: paired comparisons")
