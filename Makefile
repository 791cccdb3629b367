# Two commands do all set-up on a fresh machine with Python 3:
#   make study   -> pytest experiments -m quick on the bundled model (report in reports/quick/)
#   make test    -> the project's test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, and only when the venv has none: `make setup TORCH=...` to choose
# another build; `make setup VENV_FLAGS=--system-site-packages` reuses an installed CUDA torch.
TORCH ?= torch==2.13.0
VENV_FLAGS ?=

.PHONY: setup study full test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

study: setup
	$(BIN)/pytest experiments -m quick

full: setup
	$(BIN)/pytest experiments -m full

test: setup
	$(BIN)/pytest -n 2

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean:
	rm -rf .codi_cache reports/quick reports/full reports/all
