from vislib.jobs.lavise import lavise_vg_concepts
from vislib.runlog import log_to

with log_to(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    lavise_vg_concepts(root=p.root, embeddings=snakemake.input.embeddings, settings=p.settings,
                       out=out.concepts, stats_out=out.stats)
