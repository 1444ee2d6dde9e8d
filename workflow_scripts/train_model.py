import torch

from vislib.data import DatasetRef
from vislib.jobs.models import train_model
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    p, out = snakemake.params, snakemake.output
    train_model(arch=p.arch, train=p.train, dataset=DatasetRef(**p.dataset), device=p.device,
                checkpoint=out.checkpoint, history_path=out.history, curve_path=out.curve)
