from vislib.jobs import write_image_list
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    write_image_list(snakemake.params.spec, snakemake.wildcards.dataset, snakemake.output[0])
