# Set-up and entry points. Everything installs into .venv at the repo root.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-slow test-all demo bench clean

# Reinstall when the project's dependency list or pinned versions change. constraints.txt pins
# this repository's exact versions (torch==2.14.1, torchvision==0.29.1, ...); the package declares ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Lint first (a second or two); the rules and their reasons are in pyproject.toml [tool.ruff].
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# The fast tier (what a contributor runs; under ~6 minutes on 2 cores). Tiers and gates: tests/README.md.
test: lint
	$(PY) -m pytest -m "not slow" --durations=15

# The slow tier alone (trainings end to end, subprocess kill/resume, the reduced demo); .ci/run runs it after 'test'.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow --durations=15

# Every tier in one run.
test-all: lint
	$(PY) -m pytest --durations=25

demo: $(STAMP)
	$(VENV)/bin/pathalign demo

clean:
	rm -rf $(VENV) demo_output
