import torch

from vislib.data import DatasetRef
from vislib.jobs.evaluate import evaluate
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    w, p = snakemake.wildcards, snakemake.params
    evaluate(heatmaps=snakemake.input.heatmaps, metrics=p.metrics, model=p.model, dataset=DatasetRef(**p.dataset),
             labels={"experiment": w.experiment, "dataset": w.dataset, "model": w.model, "layer": w.layer,
                     "method": w.method, "target_mode": p.target},
             device=p.device, out=snakemake.output[0], batch_size=p.batch_size,
             decode_threads=snakemake.threads)
