"""The three SSL losses against closed-form values on hand-made inputs (not re-derivations of the same code)."""

from __future__ import annotations

import math

import pytest
import torch

from rcdm_lab.pretrain.losses import barlow_twins, nt_xent, supervised, vicreg, vicreg_terms

A = 1.5
# Four embeddings whose two columns have mean 0, unbiased variance 3 (std sqrt(3) > 1) and covariance 0.
WHITE = torch.tensor([[A, A], [-A, A], [A, -A], [-A, -A]])
# Two identical columns: unbiased covariance 3 off the diagonal.
TWIN_COLUMNS = torch.tensor([[A, A], [-A, -A], [A, A], [-A, -A]])


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_of_two_identical_orthogonal_pairs(temperature):
    # Views identical (cosine 1 with the positive), the other image orthogonal (cosine 0 with both of its views):
    # each anchor's loss is -log(e^(1/t) / (e^(1/t) + 2 e^0)) = log(1 + 2 e^(-1/t)).
    z = torch.eye(2)
    expected = math.log(1 + 2 * math.exp(-1 / temperature))
    assert nt_xent(z, z, temperature).item() == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_nt_xent_ignores_scale_and_rewards_aligned_views():
    z = torch.eye(4)
    assert nt_xent(3 * z, z, 0.5).item() == pytest.approx(nt_xent(z, z, 0.5).item(), rel=1e-6)
    # Views swapped between images: each positive now sits at cosine 0 and a negative at 1.
    swapped = z[[1, 0, 3, 2]]
    assert nt_xent(z, swapped, 0.5) > nt_xent(z, z, 0.5) + 1.0


def test_vicreg_variance_term_of_constant_embeddings_is_the_full_hinge():
    # std = sqrt(0 + eps) = 0.01 in every dimension: hinge 1 - 0.01 per dimension and view, weighted 25.
    constant = torch.full((8, 5), 0.7)
    terms = vicreg_terms(constant, constant)
    assert terms["variance"].item() == pytest.approx(0.99, rel=1e-6)
    assert terms["invariance"].item() == 0 and terms["covariance"].item() == pytest.approx(0, abs=1e-12)
    assert vicreg(constant, constant).item() == pytest.approx(25 * 0.99, rel=1e-6)


def test_vicreg_invariance_of_shifted_whitened_embeddings():
    # Variance hinge 0 (std sqrt 3 > 1), no covariance; views 0.5 apart in every coordinate: MSE 0.25, weighted 25.
    assert vicreg(WHITE, WHITE + 0.5).item() == pytest.approx(25 * 0.25, rel=1e-6)
    assert vicreg(WHITE, WHITE + 0.5, invariance=1.0).item() == pytest.approx(0.25, rel=1e-6)


def test_vicreg_covariance_of_duplicated_columns():
    # Off-diagonal covariance 3 twice per view: (9 + 9) / D=2 = 9 per view, 18 for both, weighted 1.
    terms = vicreg_terms(TWIN_COLUMNS, TWIN_COLUMNS)
    assert terms["covariance"].item() == pytest.approx(18.0, rel=1e-6)
    assert vicreg(TWIN_COLUMNS, TWIN_COLUMNS).item() == pytest.approx(18.0, rel=1e-6)


def test_barlow_twins_of_perfectly_correlated_decorrelated_features_is_zero():
    assert barlow_twins(WHITE, WHITE).item() == pytest.approx(0.0, abs=1e-5)
    # Any per-dimension affine map of a view keeps the cross-correlation at the identity.
    assert barlow_twins(WHITE, 3 * WHITE + 1).item() == pytest.approx(0.0, abs=1e-5)


def test_barlow_twins_of_anticorrelated_views():
    # C = -I: (1 - (-1))^2 = 4 on each of the D = 2 diagonal entries, nothing off the diagonal.
    assert barlow_twins(WHITE, -WHITE).item() == pytest.approx(8.0, rel=1e-4)


def test_barlow_twins_off_diagonal_is_weighted_by_lambda():
    # Duplicated columns: C is all ones (diagonal term 0); the two off-diagonal ones cost lambda each.
    assert barlow_twins(TWIN_COLUMNS, TWIN_COLUMNS, lambd=0.1).item() == pytest.approx(0.2, rel=1e-4)


def test_supervised_loss_is_the_cross_entropy_of_uniform_logits():
    assert supervised(torch.zeros(4, 8), torch.arange(4)).item() == pytest.approx(math.log(8), rel=1e-6)
