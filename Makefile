# Two commands do all set-up on a fresh machine:
#   make demo   - installs into .venv and runs the demo pipeline on its built-in tiny world
#   make test   - installs into .venv (with the test extras) and runs the test suite
PY ?= python3.11
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: test demo install bench-install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch must be installed before anything that depends on it, so pip takes the local CPU wheel.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

bench-install: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

demo: $(STAMP)
	$(BIN)/rlhf-jax demo --out runs/demo

clean:
	rm -rf $(VENV) runs
