"""The training objectives of rcdm-pretrain's methods, written out (no SSL library: each is a few lines).

Every loss takes the two views' projector outputs ``z1, z2`` of shape (N, D) -- row i of both is the same image --
and returns a scalar; ``vicreg_terms`` also gives VICReg's three terms, for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's normalized temperature-scaled cross-entropy (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", Eq. 1), averaged over all 2N anchors.

    Each of the 2N embeddings is an anchor whose positive is its other view; the 2N - 2 other embeddings of the
    batch are its negatives. Similarities are cosines divided by ``temperature``.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # an embedding is never its own negative
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def _off_diagonal(matrix: Tensor) -> Tensor:
    d = matrix.shape[0]
    return matrix.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> dict[str, Tensor]:
    """VICReg's unweighted terms (Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization
    for Self-Supervised Learning", Eqs. 1-5, as in the official implementation):

    - invariance: the mean squared distance between the views' embeddings;
    - variance: the mean over dimensions of the hinge ``relu(1 - sqrt(Var + eps))`` (unbiased variance over the
      batch), averaged over the two views;
    - covariance: the sum of squared off-diagonal covariances divided by D, summed over the two views.
    """
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    z1, z2 = z1 - z1.mean(dim=0), z2 - z2.mean(dim=0)
    std1, std2 = torch.sqrt(z1.var(dim=0) + eps), torch.sqrt(z2.var(dim=0) + eps)
    variance = F.relu(1 - std1).mean() / 2 + F.relu(1 - std2).mean() / 2
    cov1, cov2 = z1.T @ z1 / (n - 1), z2.T @ z2 / (n - 1)
    covariance = _off_diagonal(cov1).pow(2).sum() / d + _off_diagonal(cov2).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg(z1: Tensor, z2: Tensor, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0,
           eps: float = 1e-4) -> Tensor:
    """VICReg's loss: ``invariance * inv + variance * var + covariance * cov`` (the paper's 25 / 25 / 1)."""
    terms = vicreg_terms(z1, z2, eps)
    return invariance * terms["invariance"] + variance * terms["variance"] + covariance * terms["covariance"]


def barlow_twins(z1: Tensor, z2: Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", Eq. 1): ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``, where C is the
    cross-correlation matrix of the two views' embeddings, each standardised over the batch (biased variance, as
    the official BatchNorm1d(affine=False) does).
    """
    z1, z2 = z1.float(), z2.float()
    n = len(z1)
    a = (z1 - z1.mean(dim=0)) / torch.sqrt(z1.var(dim=0, unbiased=False) + eps)
    b = (z2 - z2.mean(dim=0)) / torch.sqrt(z2.var(dim=0, unbiased=False) + eps)
    c = a.T @ b / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diagonal + lambd * _off_diagonal(c).pow(2).sum()


def supervised(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of a linear classifier over the labelled class factor (the supervised baseline)."""
    return F.cross_entropy(logits.float(), targets)
