# The two commands of the README: `make demo` and `make test`. Both create .venv if missing.
# TORCH_SPEC picks the torch requirement (default: plain `torch`, as CI and a newcomer get it).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO ?= workflows/txt2img.yaml

.PHONY: demo test bench install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/latentgraph run $(DEMO) --output-dir output

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) output temp *.egg-info
