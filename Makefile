# The workbook's commands. Each creates .venv on first use (Python 3.11+ and make are all you need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.installed
KERNEL := pretrain-finetune
PROFILE ?= quick
ARGS   ?=
# The tested versions (constraints.txt); `make CONSTRAINTS= venv` installs the newest that fit instead.
CONSTRAINTS ?= constraints.txt
# Every extra of pyproject.toml (dev, cluster, tensorboard, ...): what the tests need.
EXTRAS ?= $(shell $(PYTHON) -c "import tomllib; print(','.join(tomllib.load(open('pyproject.toml', 'rb'))['project'].get('optional-dependencies', {})))" 2>/dev/null || echo dev,cluster,tensorboard,data,classroom)

.PHONY: run test lab bench clean venv constraints

venv: $(READY)

$(READY): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (pretrain-finetune workbook)" >/dev/null
	@touch $(READY)

## run: execute every notebook in the quick profile into runs/<timestamp>/ and write the report,
## JOBS notebooks at a time: 1 = one kernel using every core; 2 = two kernels with cores / 2 threads
## each (shared checkpoints are still built once). The default is whichever measured faster.
JOBS ?= 2
run: $(READY)
	$(PY) -m helpers.run --profile $(PROFILE) --jobs $(JOBS) $(ARGS)

## test: unit tests, every notebook in smoke (nbval), the browser, and the quick-profile claim checks,
## in TEST_JOBS pytest-xdist workers (each gets cores / TEST_JOBS threads)
TEST_JOBS ?= 2
test: $(READY)
	$(PY) -m pytest -n $(TEST_JOBS) $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; exit $$status

## lab: JupyterLab on notebooks/ with the workbook's kernel
lab: $(READY)
	$(VENV)/bin/jupyter lab notebooks/

## bench: training-loop throughput vs a bare loop and the matmul peak, and each notebook's newest
## quick time against its budget (ARGS=--run-notebooks runs them first); written to runs/bench/
bench: $(READY)
	$(PY) -m helpers.bench $(ARGS)

## constraints: pin the versions installed now (after an upgrade the tests passed with)
constraints: $(READY)
	$(PY) -m helpers.constraints

## clean: remove generated data, checkpoints and runs (never sources, never .venv)
clean:
	rm -rf runs data/store data/torchvision .pytest_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
