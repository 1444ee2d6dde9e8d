from vislib.jobs.aggregate import aggregate
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    out, p = snakemake.output, snakemake.params
    aggregate(metric_shards=list(snakemake.input), metrics=out.metrics, summary=out.summary, summary_md=out.summary_md,
              summary_html=out.summary_html, comparisons=out.comparisons, experiment=snakemake.wildcards.experiment,
              experiment_config=p.experiment_config, device=p.device)
