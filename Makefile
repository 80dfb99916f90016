# The two set-up commands (README "Quick start"). Each installs what it needs first.
VENV ?= .venv
export NIXBUILD_VENV := $(VENV)

.PHONY: demo test lint

demo:
	@bash .ci/bootstrap
	$(VENV)/bin/nixbuild demo

test:
	@bash .ci/bootstrap test
	$(VENV)/bin/ruff check nixbuild tests
	$(VENV)/bin/ruff format --check nixbuild tests
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

lint:
	$(VENV)/bin/ruff check nixbuild tests
	$(VENV)/bin/mypy
