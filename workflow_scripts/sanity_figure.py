from vislib.aggregate import sanity_figure
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    means = sanity_figure(list(snakemake.input), snakemake.output[0],
                          f"{snakemake.wildcards.experiment}: cascading model randomization")
    print(means.to_string(index=False))
