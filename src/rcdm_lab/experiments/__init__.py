"""One module per paper figure; `rcdm-figure experiment=<name>` runs `rcdm_lab.experiments.<name>.make`.

Each module's `make(ctx: FigureContext, settings: dict) -> dict` builds representations, samples (batched, with
fixed noise where the paper compares columns), writes its PNG through `ctx.save` and returns the numbers behind it.
Its settings are `figure:` in conf/experiment/<name>.yaml.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rcdm_lab.errors import RCDMError

FIGURES = (
    "samples",               # Fig. 1a/8 in distribution, 1b/9/28 with images=<any folder>
    "interpolation",         # Fig. 1c/14/15
    "compare_models",        # Fig. 2/24/36 (ckpts=[...])
    "augmentations",         # Fig. 3/25/26
    "adversarial",           # Fig. 4/29
    "manipulation",          # Fig. 5/30/31
    "algebra",               # Fig. 32
    "confidence",            # Fig. 12
    "nearest_neighbors",     # Fig. 16
    "class_mean",            # Fig. 27
    "training_checkpoints",  # Fig. 35 (ckpts=[...])
    "unconditional",         # Fig. 20
)
# Figures that need several checkpoints; `make figures CKPT=...` runs all the others.
MULTI_MODEL_FIGURES = ("compare_models", "training_checkpoints")


def figure_module(name: str) -> ModuleType:
    if name not in FIGURES:
        raise RCDMError(f"unknown figure {name!r}; figures: {', '.join(FIGURES)}")
    return importlib.import_module(f"{__name__}.{name}")
