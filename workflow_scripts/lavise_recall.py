from vislib.jobs.lavise import lavise_recall
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    out = snakemake.output
    lavise_recall(analyses=list(snakemake.input.analyses), words=list(snakemake.input.words),
                  settings=snakemake.params.settings, experiment=snakemake.wildcards.experiment, recall_out=out.recall,
                  markdown_out=out.markdown, words_out=out.words)
