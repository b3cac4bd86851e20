# The two quick-start commands: `make demo` runs the whole lifecycle on the embedded default,
# `make test` runs lint and the test suite. Both set up .venv first.
.PHONY: setup services demo test test-real lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python -m flows.lifecycle

services:  # Debian's chromium and postgresql, which tests drive for real
	./scripts/install_test_services.sh

lint: setup
	.venv/bin/ruff check .

test: lint services
	.venv/bin/python -m pytest

test-real: setup
	.venv/bin/python -m pytest -m real_model
