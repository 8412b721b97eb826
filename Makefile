PY ?= python3
VENV ?= .venv

.PHONY: install test lint demo browser-deps

install:
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

# Debian's Chromium for the browser tests (skipped where it is absent).
browser-deps:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test:
	$(VENV)/bin/python -m pytest

lint:
	$(VENV)/bin/ruff check src tests benchmarks

demo:
	$(VENV)/bin/svdh demo --quick
