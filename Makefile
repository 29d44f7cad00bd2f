# Set-up and entry points. Everything installs into .venv at the repo root.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

# Reinstall when the project's dependency list or pinned versions change. constraints.txt pins
# this repository's exact versions (torch==2.14.1, torchvision==0.29.1, ...); the package declares ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/pathalign demo

clean:
	rm -rf $(VENV) demo_output
