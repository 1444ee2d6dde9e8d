# The two set-up commands: `make demo` (embedded default, end to end) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: demo test lint clean-results

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,slurm]"
	touch $@

demo: $(VENV)/.installed
	$(SNAKEMAKE) --cores $(CORES)
	$(SNAKEMAKE) --cores $(CORES) --report results/report.html

test: $(VENV)/.installed
	$(PY) -m pytest -q

# ruff (line length 120 enforced), Snakemake's linter, and mypy on vislib/ (settings in pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check vislib workflow_scripts tests benchmarks
	$(SNAKEMAKE) --lint
	$(VENV)/bin/mypy

clean-results:
	rm -rf results logs benchmarks/runs
