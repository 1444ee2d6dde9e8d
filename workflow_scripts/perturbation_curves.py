from vislib.jobs.figures import perturbation_curves
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    perturbation_curves(metrics=snakemake.input[0], out=snakemake.output[0],
                        title=f"{snakemake.wildcards.experiment}: deletion and insertion curves")
