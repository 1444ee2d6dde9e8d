from vislib.jobs import figure_grid
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    figure_grid(list(snakemake.input.heatmaps), snakemake.params.methods, snakemake.params.n_images,
                snakemake.params.model, snakemake.params.dataset, w.layer,
                f"{w.experiment}: {w.dataset} / {w.model} / {w.layer}", snakemake.output[0])
