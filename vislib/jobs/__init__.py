"""The job layer: one function per workflow rule, named after the rule, with keyword-only arguments.

Modules follow `rules/*.smk` (data, models, explain, evaluate, aggregate, sanity, featvis, lavise). Each rule's
glue script in `workflow_scripts/` makes exactly one call into its module. Every job is a fresh Python process,
so this package imports nothing itself, and modules import what only some jobs need (matplotlib, pandas)
inside those jobs.
"""
