from vislib.jobs.data import prepare_dataset
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    prepare_dataset(kind=p.kind, params=p.params, root=p.root, marker=snakemake.output[0],
                    model_classes=p.model_classes)
