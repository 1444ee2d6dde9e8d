from vislib.jobs import prepare_dataset
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    prepare_dataset(snakemake.params.spec, snakemake.params.root, snakemake.output[0])
