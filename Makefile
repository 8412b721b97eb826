PY ?= python3
VENV ?= .venv

.PHONY: install test lint mypy-next demo browser-deps

# Packages type-checked by `make lint` (zero errors each).

MYPY_PATHS ?= src/svdh/core src/svdh/runs src/svdh/inference
MYPY_NEXT ?= src/svdh/core src/svdh/runs src/svdh/inference

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
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy $(MYPY_PATHS)

mypy-next:
	-$(VENV)/bin/mypy $(MYPY_NEXT)

demo:
	$(VENV)/bin/svdh demo --quick
