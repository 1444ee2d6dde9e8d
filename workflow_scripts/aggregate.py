from vislib.jobs import aggregate_experiment
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    aggregate_experiment(list(snakemake.input), dict(snakemake.output.items()), snakemake.wildcards.experiment,
                         snakemake.params.experiment_config, snakemake.params.device)
