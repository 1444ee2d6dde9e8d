# vislib workflow: data -> models -> explain -> evaluate -> aggregate (+ report); featvis and LaViSE.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default. A config given on the command line (--configfile: a preset, your own) replaces it
# instead of being merged into it, so that a preset runs only what it names.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common/config.smk"
include: "rules/common/paths.smk"
include: "rules/common/specs.smk"
include: "rules/common/data.smk"
include: "rules/common/sanity.smk"
include: "rules/common/featvis.smk"
include: "rules/common/lavise.smk"
include: "rules/cluster.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/explain.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/sanity.smk"
include: "rules/featvis.smk"
include: "rules/lavise.smk"


report: "report/workflow.rst"


rule all:
    input:
        all_outputs(),
    default_target: True
