from vislib.data import DatasetRef
from vislib.jobs.data import image_list
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    image_list(dataset=DatasetRef(**snakemake.params.dataset), limit=snakemake.params.limit, out=snakemake.output[0])
