# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean
install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pscv demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q tests

# Skips the slow real-data tests (CI runs them all through `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf demo_out bench_out .pytest_cache
