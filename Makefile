# One-command entry points. Each creates the virtualenv and installs the project (with its dev
# extras) on first use, and again whenever pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean lint docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vfl-sim demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/vfl-sim bench

clean:
	rm -rf $(VENV) runs .pytest_cache site

lint: $(STAMP)
	$(BIN)/ruff check vfl_sim tests benchmarks scripts
	$(BIN)/ruff format --check vfl_sim tests benchmarks scripts
	$(BIN)/mypy vfl_sim

# The documentation site, built strictly (a broken link, a missing page or a warning fails it) into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
