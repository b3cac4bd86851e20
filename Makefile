# The two quick-start commands: `make demo` runs the whole lifecycle on the embedded default,
# `make test` runs lint and the test suite. Both set up .venv first.
.PHONY: setup browser demo test test-real lint

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/python -m flows.lifecycle

browser:
	./scripts/install_browser.sh

lint: setup
	.venv/bin/ruff check .

test: lint browser
	.venv/bin/python -m pytest

test-real: setup
	.venv/bin/python -m pytest -m real_model
