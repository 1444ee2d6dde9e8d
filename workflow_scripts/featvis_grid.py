from vislib.figures import featvis_grid
from vislib.io import load_featvis_shard
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    featvis_grid(snakemake.output[0], [load_featvis_shard(path) for path in snakemake.input],
                 f"{w.experiment}: {w.model} / {w.layer} / {w.method}")
