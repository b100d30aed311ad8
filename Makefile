# Two entry points do all set-up on a fresh machine (Python >= 3.11 with venv and pip):
#   make demo   install, build the bundled COCO sample, print its stats and a sample query
#   make test   install with test and model extras (torch, bounded) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROOT ?= build/demo

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,models,scale]'

demo: install
	$(BIN)/synthvg build --config configs/demo.yaml --out $(ROOT)
	$(BIN)/synthvg sql --root $(ROOT) "SELECT predicate, verdict, count(*) AS n FROM relations GROUP BY 1, 2 ORDER BY n DESC LIMIT 12"
	@echo "the dataset is in $(ROOT)/; next: source $(BIN)/activate, then synthvg stats --root $(ROOT) (see README.md)"

test: install-test
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_build.py

clean:
	rm -rf build .pytest_cache
