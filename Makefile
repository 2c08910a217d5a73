# `make run`: set up and run the workflow on the embedded default; `make test`: set up and test.
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run report test rehearsal lint clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[all]"
	# The authors' MambaVision package, the reference of tests/test_encoders_mambavision.py; its
	# pinned dependencies (mamba-ssm, an older transformers) are neither needed nor installable here.
	$(BIN)/pip install --quiet --no-deps "mambavision==1.2.0"
	touch $@

# Jobs start from a preloaded interpreter (`xsae run`); `make run RUN=snakemake` starts each cold.
RUN ?= xsae run --
run: setup
	$(BIN)/$(RUN) --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

test: setup
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

# The whole paper DAG at miniature scale, end to end (about 7 minutes on 2 cores; `make test` runs it too).
rehearsal: setup
	$(BIN)/python -m pytest -m rehearsal tests/test_rehearsal.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

# Every CUDA path against its CPU result, with throughput (paper widths need a GPU; on a CPU-only
# machine: make gpu-check GPU_CHECK_ARGS=--small).
gpu-check: setup
	$(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf results .snakemake
