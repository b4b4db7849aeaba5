"""The rcdm-train checkpoint: what it records, how that record is written and read, and what must match to use it.

A checkpoint is Lightning's dictionary (``state_dict`` with the UNet, its EMA copy and the representation
statistics; optimizer and loop states; ``global_step``; the RNG states of `training.randomness`) plus, under
"rcdm", a :class:`CheckpointRecord`: everything needed to rebuild the model for sampling without the training
config -- the UNet and diffusion, the encoder and its identity (so a different representation is refused), the
standardisation, the resolution and the data the model was trained on. This module is the one place that writes,
reads (one ``torch.load``), versions and checks that record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rcdm_lab.errors import RCDMError

# Raised when the record changes in a way an older reader would misread; a reader refuses newer formats.
FORMAT_VERSION = 1

_RECORD_KEY = "rcdm"
_EMA_PREFIX = "ema.module."
# The identity entries that decide the representation: two encoders agreeing on all of them give the same h.
_IDENTITY_KEYS = ("name", "layer", "weights_digest", "input_norm", "input_size", "dim")


@dataclass(frozen=True)
class EncoderRecord:
    """The frozen encoder a model was trained on.

    Attributes:
        spec: the keyword arguments of `rcdm_lab.encoders.build_encoder` that rebuild it (name, layer, weights,
            input_size, input_norm).
        identity: its `FrozenEncoder.identity()` at training time, against which a rebuilt encoder is checked.
    """

    spec: dict[str, Any]
    identity: dict[str, Any]

    def build_spec(self, weights: str | None = None) -> dict[str, Any]:
        """`spec`, with `weights` replacing the recorded weights source when given (e.g. a local copy)."""
        return {**self.spec, "weights": weights} if weights is not None else dict(self.spec)


@dataclass(frozen=True)
class CheckpointRecord:
    """What an rcdm-train checkpoint records about its model (stored under "rcdm").

    Attributes:
        unet: the `UNetModel` keyword arguments (its ``config``).
        diffusion: the `build_diffusion` keyword arguments.
        encoder: the encoder's build spec and identity.
        standardize: whether the UNet is fed standardised representations (statistics in the state dict).
        cond_drop: the condition-dropout rate it was trained with.
        resolution: the image size it generates.
        data: the resolved data config it was trained on (None in checkpoints written before it was recorded).
        format_version: the record's format; `FORMAT_VERSION` for records written by this rcdm_lab.
    """

    unet: dict[str, Any]
    diffusion: dict[str, Any]
    encoder: EncoderRecord
    standardize: bool
    cond_drop: float
    resolution: int
    data: dict[str, Any] | None
    format_version: int = FORMAT_VERSION

    def to_saved(self) -> dict[str, Any]:
        """The plain dictionary stored in the checkpoint (the encoder's identity nested in its spec, as since v1)."""
        saved = asdict(self)
        saved["encoder"] = {**self.encoder.spec, "identity": self.encoder.identity}
        return saved

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], source: str) -> CheckpointRecord:
        """Parse a stored record; `source` names the checkpoint in errors."""
        version = saved.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise RCDMError(f"{source} was written by a newer rcdm_lab (format {version}); upgrade rcdm_lab")
        missing = [key for key in ("unet", "diffusion", "encoder", "standardize", "resolution") if key not in saved]
        if "encoder" in saved and "identity" not in saved["encoder"]:
            missing.append("encoder.identity")
        if missing:
            raise RCDMError(f"{source} has an incomplete rcdm record (missing {', '.join(missing)}): it was edited "
                            "or written by something else than rcdm-train; use the file rcdm-train wrote")
        encoder = dict(saved["encoder"])
        identity = encoder.pop("identity")
        return cls(unet=dict(saved["unet"]), diffusion=dict(saved["diffusion"]),
                   encoder=EncoderRecord(spec=encoder, identity=dict(identity)),
                   standardize=bool(saved["standardize"]), cond_drop=float(saved.get("cond_drop", 0.0)),
                   resolution=int(saved["resolution"]), data=saved.get("data"), format_version=int(version))


def write_record(checkpoint: dict[str, Any], record: CheckpointRecord) -> None:
    """Store `record` in a checkpoint dictionary Lightning is about to save."""
    checkpoint[_RECORD_KEY] = record.to_saved()


@dataclass(frozen=True, eq=False)  # eq=False: comparing two files' tensors is never what `==` should mean
class Checkpoint:
    """An rcdm-train checkpoint file, read once: its record and everything else it holds.

    Attributes:
        path: where it was read from.
        record: the model it describes.
        contents: the whole dictionary as saved (``state_dict``, ``global_step``, ``rng_states``, ...).
    """

    path: Path
    record: CheckpointRecord
    contents: dict[str, Any]

    @property
    def state_dict(self) -> dict[str, Tensor]:
        return self.contents["state_dict"]

    def ema_unet_state_dict(self) -> dict[str, Tensor]:
        """The EMA UNet's weights (the ones to sample with), named as in a bare `UNetModel`."""
        return {k.removeprefix(_EMA_PREFIX): v for k, v in self.state_dict.items() if k.startswith(_EMA_PREFIX)}

    def representation_stats(self) -> tuple[Tensor, Tensor] | None:
        """(mean, std) the UNet's inputs are standardised with, or None when the model was trained on raw h."""
        if not self.record.standardize:
            return None
        return self.state_dict["rep_mean"], self.state_dict["rep_std"]

    def check_encoder(self, identity: Mapping[str, Any]) -> None:
        """Refuse an encoder (by its `identity()`) whose representation is not the one this model was trained on."""
        mismatch = describe_encoder_mismatch(self.record.encoder.identity, identity)
        if mismatch:
            raise RCDMError(f"{self.path} was trained on another representation than the encoder built for it "
                            f"({mismatch}). Pass the weights it was trained with: encoder_weights=PATH")


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read an rcdm-train checkpoint: a missing, unreadable, foreign or newer-format file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise RCDMError(f"checkpoint not found: {path}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle traceback
        raise RCDMError(f"could not read checkpoint {path} ({type(error).__name__}: {error}); is it complete? "
                        "(rcdm-train writes checkpoints atomically; a .tmp file is a leftover)") from None
    saved = contents.get(_RECORD_KEY) if isinstance(contents, Mapping) else None
    if saved is None:
        raise RCDMError(f"{path} is not an rcdm-train checkpoint (no 'rcdm' metadata). "
                        f"For a released RCDM model use ckpt=official:{path}")
    return Checkpoint(path=path, record=CheckpointRecord.from_saved(saved, str(path)), contents=contents)


def check_resumable(checkpoint: Mapping[str, Any], encoder_identity: Mapping[str, Any],
                    unet_config: Mapping[str, Any]) -> None:
    """Refuse to resume training from `checkpoint` with another representation or another UNet."""
    saved = checkpoint.get(_RECORD_KEY)
    if saved is None:
        raise RCDMError("this checkpoint was not written by rcdm-train (no 'rcdm' metadata); "
                        "to sample from a released RCDM model use rcdm-sample ckpt=official:PATH")
    record = CheckpointRecord.from_saved(saved, "the checkpoint to resume")
    mismatch = describe_encoder_mismatch(record.encoder.identity, encoder_identity)
    if mismatch:
        raise RCDMError(f"cannot resume: the checkpoint was trained on a different representation ({mismatch}). "
                        "Resume with the same encoder/layer overrides as the original run, or start a new run "
                        "with another name=...")
    if record.unet != unet_config:
        changed = sorted(k for k in set(record.unet) | set(unet_config) if record.unet.get(k) != unet_config.get(k))
        raise RCDMError(f"cannot resume: the UNet configuration differs from the checkpoint's in {changed}; "
                        "resume with the original model/resolution overrides")


def describe_encoder_mismatch(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """'' when two encoder identities produce the same representation, else what differs, for an error message."""
    diffs = [f"{k}: checkpoint {expected.get(k)!r} vs now {actual.get(k)!r}" for k in _IDENTITY_KEYS
             if expected.get(k) != actual.get(k)]
    return "; ".join(diffs)
