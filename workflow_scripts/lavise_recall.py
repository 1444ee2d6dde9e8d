from vislib.lavise.jobs import recall_job
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    out = snakemake.output
    recall_job(list(snakemake.input.analyses), list(snakemake.input.words), snakemake.params.settings,
               snakemake.wildcards.experiment, out.recall, out.markdown, out.words)
