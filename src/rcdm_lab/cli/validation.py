"""The settings each command checks before it starts any work (rules: `rcdm_lab.settings`).

Metrics carry the rules of their own settings blocks (`RULES` in their modules), and a figure kind validates its own
typed `Settings` (rcdm_lab.figures), so a new figure or metric is checked without touching this file.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.diffusion.samplers import KNOWN_SAMPLERS, check_sampler_options
from rcdm_lab.diffusion.schedules import KNOWN_SCHEDULES, check_spacing
from rcdm_lab.encoders.frozen import INPUT_NORMS
from rcdm_lab.encoders.registry import LAYERS
from rcdm_lab.errors import RCDMError
from rcdm_lab.models.unet import COND_MODES
from rcdm_lab.precision import CHOICES as PRECISIONS
from rcdm_lab.precision import normalise_precision
from rcdm_lab.settings import Rule, check, flag, integer, number, one_of, satisfies


def _device(value: object) -> None:
    if value != "auto":
        torch.device(str(value))


def _devices(value: object) -> None:
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)):
        raise ValueError(value)


def sampling_rules(prefix: str = "") -> list[Rule]:
    """What `RCDMPipeline.sample` reads, for a block at `prefix` ("sampling." in eval/figure, "" in rcdm-sample)."""
    return [
        one_of(f"{prefix}sampler", KNOWN_SAMPLERS),
        satisfies(f"{prefix}steps", check_spacing, "a step count >= 1, section counts '10,15,20' or 'ddimN'"),
        number(f"{prefix}guidance", at_least=0, example="1 (plain) or 8"),
        number(f"{prefix}eta", at_least=0, at_most=1),
        integer(f"{prefix}seed", minimum=0),
        integer(f"{prefix}batch_size"),
        satisfies(f"{prefix}precision", normalise_precision, "one of " + ", ".join(PRECISIONS)),
    ]


def _sampler_options(cfg: DictConfig, prefix: str) -> None:
    """The sampler's own check of its option combination (eta only for DDIM), run before any work."""
    block = OmegaConf.select(cfg, prefix.rstrip(".")) if prefix else cfg
    if block is not None and "sampler" in block:
        try:
            check_sampler_options(block.sampler, block.get("eta", 0.0))
        except RCDMError as error:
            raise RCDMError(f"{prefix.rstrip('.')}: {error}" if prefix else str(error)) from None


TRAIN_RULES: list[Rule] = [
    integer("seed", minimum=0),
    integer("resolution", minimum=8),
    # encoder
    one_of("encoder.layer", LAYERS),
    integer("encoder.input_size", minimum=16),
    one_of("encoder.input_norm", INPUT_NORMS),
    flag("encoder.standardize"),
    # model
    number("model.optimizer.lr", above=0, example="1e-4"),
    number("model.optimizer.weight_decay", at_least=0),
    number("model.ema_decay", at_least=0, below=1, example="0.9999"),
    number("model.cond_drop", at_least=0, below=1, example="0.15"),
    number("model.vlb_weight", at_least=0),
    number("model.min_snr_gamma", above=0, example="5", optional=True),
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
    *sampling_rules("callbacks.preview."),
    # rcdm-demo's own block
    integer("demo.num_conditionings", minimum=2),
    integer("demo.samples_per_conditioning"),
    *sampling_rules("demo."),
]

SAMPLE_RULES: list[Rule] = [
    integer("n"),
    *sampling_rules(),
    satisfies("device", _device, "auto, cpu, cuda or cuda:<index>"),
]

_SHARED_EVAL_RULES: list[Rule] = [
    *sampling_rules("sampling."),
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
    _sampler_options(cfg, "callbacks.preview.")
    _sampler_options(cfg, "demo.")


def validate_sample(cfg: DictConfig) -> None:
    check(cfg, SAMPLE_RULES)
    _sampler_options(cfg, "")


def validate_eval(cfg: DictConfig) -> None:
    from rcdm_lab.cli.eval import METRICS

    rules = [*_SHARED_EVAL_RULES, number("kde_sigma", above=0)]
    for name in cfg.get("metric") or {}:
        if name in METRICS:
            rules += [rule.under(f"metric.{name}.") for rule in getattr(METRICS[name], "RULES", [])]
    check(cfg, rules)
    _sampler_options(cfg, "sampling.")


def validate_figure(cfg: DictConfig) -> None:
    """rcdm-figure's own settings; the `figure:` block is checked by its kind's Settings (rcdm_lab.figures)."""
    check(cfg, [*_SHARED_EVAL_RULES, integer("seed", minimum=0)])
    _sampler_options(cfg, "sampling.")
