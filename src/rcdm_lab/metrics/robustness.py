"""Robustness of a representation to FGSM: how often a linear probe's reading of h flips as the attack grows.

The paper's claim (iii) (Sec. 4.2, Fig. 4) is that SSL representations are more robust to small adversarial
perturbations than supervised ones. `flip_rates` attacks each image through the encoder and a linear probe on it
(`rcdm_lab.figures.adversarial.fgsm`: one gradient, every eps in the same pixel units of images in [0, 1]) and
reports, per eps and image, whether the probe's prediction left its clean value. Paired across encoders (the same
images and eps), per-image differences give an interval for "encoder A flips less than encoder B".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rcdm_lab.encoders.frozen import FrozenEncoder
from rcdm_lab.figures.adversarial import fgsm
from rcdm_lab.metrics.probe import LinearProbe


@dataclass(frozen=True)
class Attack:
    """FGSM on N images at E strengths: the attacked images, and the probe's reading of them."""

    eps: list[float]
    attacked: Tensor   # (E, N, 3, H, W) in [0, 1]
    clean: Tensor      # (N,) the probe's prediction on the clean images
    predicted: Tensor  # (E, N) its prediction on the attacked ones

    @property
    def flipped(self) -> Tensor:
        """(E, N) bool: the attack changed the probe's prediction."""
        return self.predicted != self.clean[None]


def attack(encoder: FrozenEncoder, probe: LinearProbe, images: Tensor, eps: Sequence[float],
           batch_size: int = 128) -> Attack:
    """Untargeted FGSM against `probe` on top of `encoder`, in batches (eps = 0 leaves every image as it is)."""
    attacked, clean, predicted = [], [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        adversarial, clean_batch = fgsm(encoder, probe, batch, eps)
        attacked.append(adversarial)
        clean.append(clean_batch)
        with torch.no_grad():
            predicted.append(torch.stack([probe.predict(encoder(a)) for a in adversarial]))
    return Attack(list(eps), torch.cat(attacked, dim=1), torch.cat(clean), torch.cat(predicted, dim=1))
