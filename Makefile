# Two commands set everything up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean browser
install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[all]"
	@$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Debian's chromium + chromium-driver for the annotation page's browser tests (tests skip, with the
# reason, where they are absent). Needs root and apt-get; elsewhere it only says what to install.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "chromium and chromedriver present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	  || echo "warning: could not install chromium chromium-driver; the browser tests will be skipped"; \
	else \
	  echo "note: install Debian's chromium and chromium-driver to run the browser tests (skipped without them)"; \
	fi

demo: $(STAMP)
	$(VENV)/bin/pscv demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q --durations=25 tests

# Skips the slow real-data tests (CI runs them all through `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf demo_out bench_out .pytest_cache
