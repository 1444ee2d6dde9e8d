from vislib.data import DatasetRef
from vislib.jobs.aggregate import figure_grid
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    w, p = snakemake.wildcards, snakemake.params
    figure_grid(heatmaps=list(snakemake.input.heatmaps), methods=p.methods, n_images=p.n_images, model=p.model,
                dataset=DatasetRef(**p.dataset), title=f"{w.experiment}: {w.dataset} / {w.model} / {w.layer}",
                out=snakemake.output[0])
