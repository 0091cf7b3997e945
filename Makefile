# The two commands of the README's quick start. Both set up .venv/ first (once; again only when
# pyproject.toml changes), so they are safe to run twice and quick the second time.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
# One job slot per core: every stage runs torch/ONNX Runtime on 2 threads, so more slots than cores only make jobs
# slow each other (the README's "Measured figures" has the comparison). `make run CORES=8` on a bigger machine.
CORES   ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)

.PHONY: setup run smoke test test-fast clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python >= 3.11 needed, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,slurm]'  # slurm: the executor plugin tests/test_slurm.py runs
	@touch $(STAMP)

## make run: set up, then build everything on the embedded default (synthetic data, CPU-sized)
run: setup
	. $(VENV)/bin/activate && snakemake --cores $(CORES) all

## make smoke: the same DAG at the smoke preset (minutes; see the README)
smoke: setup
	. $(VENV)/bin/activate && snakemake --cores $(CORES) all --config preset=smoke

## make test: set up, then run the test suite (CPU only; GPU/TensorRT tests skip with their reason). Two workers
## (a third measured slower): the SLURM run, which mostly waits on its scheduler, starts beside the smoke DAG
## (tests/conftest.py orders them; pyproject's --dist loadgroup hands out one test at a time).
test: setup
	. $(VENV)/bin/activate && python -m pytest -q -n 2

## make test-fast: the edit loop's subset, without the tests marked slow (the real Snakemake/DVC/SLURM runs) or
## repeated_runs (the kill, resume and parallel-MLflow tests, which run stage commands many times over)
test-fast: setup
	. $(VENV)/bin/activate && python -m pytest -q -n 2 -m "not slow and not repeated_runs"

clean-data:
	rm -rf data .snakemake mlflow.db mlflow.db.lock mlruns
