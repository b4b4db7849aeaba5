"""The settings each command checks before it starts any work (rules: `rcdm_lab.settings`).

Metrics carry the rules of their own settings blocks (`RULES` in their modules), and a figure kind validates its own
typed `Settings` (rcdm_lab.figures), so a new figure or metric is checked without touching this file.
"""

from __future__ import annotations

import inspect

import torch
from omegaconf import DictConfig

from rcdm_lab.diffusion.samplers import SAMPLERS, check_sampler_options
from rcdm_lab.diffusion.schedules import KNOWN_SCHEDULES, check_spacing
from rcdm_lab.encoders.frozen import INPUT_NORMS
from rcdm_lab.encoders.registry import LAYERS
from rcdm_lab.errors import RCDMError
from rcdm_lab.models.unet import COND_MODES
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_lab.precision import CHOICES as PRECISIONS
from rcdm_lab.precision import normalise_precision
from rcdm_lab.settings import Rule, check, flag, integer, number, one_of, satisfies
from rcdm_lab.training import faithfulness_callback


def _device(value: object) -> None:
    if value != "auto":
        torch.device(str(value))


def _devices(value: object) -> None:
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)):
        raise ValueError(value)


# A `sampling` block (conf/sampling/) is RCDMPipeline.sample's keywords; its other keys are the sampler's options.
PIPELINE_SAMPLING_KEYWORDS = tuple(parameter.name for parameter in inspect.signature(RCDMPipeline.sample).parameters
                                   .values() if parameter.kind is inspect.Parameter.KEYWORD_ONLY)
# The settings that commands once read outside a `sampling` block (rcdm-sample's top level, demo., preview).
_MOVED_SAMPLING_SETTINGS = ("sampler", "steps", "eta", "guidance", "seed", "batch_size", "precision")


def moved_into_sampling(*old_prefixes: str) -> dict[str, str]:
    """Where the sampling settings once spelled `<prefix>steps` (`steps=`, `demo.steps=`) live now: `sampling.`."""
    return {f"{prefix}{key}": f"sampling.{key}" for prefix in old_prefixes for key in _MOVED_SAMPLING_SETTINGS}


def sampling_rules() -> list[Rule]:
    """What `RCDMPipeline.sample` reads from the `sampling` block (built per check: samplers register at import)."""
    return [
        one_of("sampling.sampler", SAMPLERS),
        satisfies("sampling.steps", check_spacing, "a step count >= 1, section counts '10,15,20' or 'ddimN'"),
        number("sampling.guidance", at_least=0, example="1 (plain) or 8"),
        integer("sampling.seed", minimum=0),
        integer("sampling.batch_size"),
        satisfies("sampling.precision", normalise_precision, "one of " + ", ".join(PRECISIONS)),
        flag("sampling.progress"),
    ]


def check_sampling(cfg: DictConfig) -> None:
    """The `sampling` block's settings, then the chosen sampler's own check of its options (e.g. DDIM's eta)."""
    check(cfg, sampling_rules())
    block = cfg.get("sampling")
    if block is None:
        return
    options = {key: value for key, value in block.items() if key not in PIPELINE_SAMPLING_KEYWORDS}
    try:
        check_sampler_options(block.sampler, options)
    except RCDMError as error:
        raise RCDMError(f"sampling: {error}") from None


TRAIN_RULES: list[Rule] = [
    integer("seed", minimum=0),
    integer("resolution", minimum=8),
    # encoder
    one_of("encoder.layer", LAYERS),
    integer("encoder.input_size", minimum=16, optional=True),  # null: the size an encoder=local file records
    one_of("encoder.input_norm", INPUT_NORMS),
    flag("encoder.standardize"),
    # model
    number("model.optimizer.lr", above=0, example="1e-4"),
    number("model.optimizer.weight_decay", at_least=0),
    number("model.ema_decay", at_least=0, below=1, example="0.9999"),
    number("model.cond_drop", at_least=0, below=1, example="0.15"),
    number("model.vlb_weight", at_least=0),
    number("model.min_snr_gamma", above=0, example="5", optional=True),
    flag("model.compile"),
    integer("model.unet.model_channels"),
    integer("model.unet.num_res_blocks"),
    number("model.unet.dropout", at_least=0, below=1),
    integer("model.unet.num_heads"),
    one_of("model.unet.cond_mode", COND_MODES),
    flag("model.unet.use_scale_shift_norm"),
    flag("model.unet.resblock_updown"),
    # diffusion
    one_of("diffusion.schedule", KNOWN_SCHEDULES),
    integer("diffusion.num_timesteps", minimum=2),
    flag("diffusion.learn_sigma"),
    # data
    integer("data.batch_size"),
    integer("data.num_workers", minimum=0),
    flag("data.flip"),
    flag("data.cache"),
    integer("data.source_size", minimum=8, optional=True),
    integer("data.dataset.num_train"),
    integer("data.dataset.num_val"),
    number("data.dataset.val_fraction", at_least=0, below=1),
    # trainer and callbacks
    integer("trainer.max_steps"),
    satisfies("trainer.precision", normalise_precision, "one of " + ", ".join(PRECISIONS)),
    satisfies("trainer.devices", _devices, "an integer >= 1, -1 (all) or auto"),
    integer("trainer.num_nodes"),
    number("trainer.gradient_clip_val", at_least=0, optional=True),
    integer("trainer.accumulate_grad_batches"),
    integer("trainer.log_every_n_steps"),
    integer("callbacks.checkpoint.every_n_train_steps"),
    integer("callbacks.preview.every_n_steps", minimum=0),
    integer("callbacks.preview.num_conditionings"),
    integer("callbacks.preview.samples_per_conditioning"),
    *[rule.under(faithfulness_callback.PREFIX) for rule in faithfulness_callback.RULES],
    # rcdm-demo's own block (its sampling is the `sampling` block)
    integer("demo.num_conditionings", minimum=2),
    integer("demo.samples_per_conditioning"),
]

SAMPLE_RULES: list[Rule] = [
    integer("n"),
    satisfies("device", _device, "auto, cpu, cuda or cuda:<index>"),
]

_SHARED_EVAL_RULES: list[Rule] = [
    satisfies("device", _device, "auto, cpu, cuda or cuda:<index>"),
]


PROBE_RULES: list[Rule] = [
    *TRAIN_RULES,   # the same encoder / layer / data / resolution groups as rcdm-train (absent keys are skipped)
    integer("probe.steps"),
    number("probe.weight_decay", at_least=0),
    integer("probe.continuous_bins", minimum=2),
    satisfies("probe.device", _device, "auto, cpu, cuda or cuda:<index>"),
]


def validate_probe(cfg: DictConfig) -> None:
    check(cfg, PROBE_RULES)


def validate_train(cfg: DictConfig) -> None:
    check(cfg, TRAIN_RULES)
    check_sampling(cfg)
    if cfg.encoder.get("name") == "factors" and cfg.data.get("flip"):
        # A flipped shape has other factors (x, rotation; the crescent's bite changes side): no labels to look up.
        raise RCDMError("encoder=factors (the oracle) has no labels for flipped images: add data.flip=false")


def validate_sample(cfg: DictConfig) -> None:
    check(cfg, SAMPLE_RULES)
    check_sampling(cfg)


def validate_eval(cfg: DictConfig) -> None:
    from rcdm_lab.cli.eval import METRICS

    rules = [*_SHARED_EVAL_RULES, number("kde_sigma", above=0)]
    for name in cfg.get("metric") or {}:
        if name in METRICS:
            rules += [rule.under(f"metric.{name}.") for rule in getattr(METRICS[name], "RULES", [])]
    check(cfg, rules)
    check_sampling(cfg)


def validate_figure(cfg: DictConfig) -> None:
    """rcdm-figure's own settings; the `figure:` block is checked by its kind's Settings (rcdm_lab.figures)."""
    check(cfg, list(_SHARED_EVAL_RULES))
    check_sampling(cfg)


VIEWER_RULES: list[Rule] = [
    *_SHARED_EVAL_RULES,
    integer("port", minimum=1, maximum=65535),
    integer("samples", minimum=1, maximum=16),
    integer("thumbnails", minimum=0),
    flag("open_browser"),
]


def validate_viewer(cfg: DictConfig) -> None:
    """rcdm-viewer's settings; the sampling block is where the page's controls start."""
    check(cfg, VIEWER_RULES)
    check_sampling(cfg)
