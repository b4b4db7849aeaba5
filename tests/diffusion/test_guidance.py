import pytest
import torch

from rcdm_lab.diffusion import build_diffusion, classifier_free, sample
from rcdm_lab.errors import RCDMError

B, C = 3, 2


def toy_unet(calls: list):
    """Reads drop_cond like the UNet: eps and v differ between conditional and null rows."""

    def model_fn(x, t, *, feat, drop_cond=None, flag=None):
        calls.append({"x": x, "t": t, "feat": feat, "drop_cond": drop_cond, "flag": flag})
        drop = torch.zeros(x.shape[0], dtype=torch.bool) if drop_cond is None else drop_cond
        drop = drop.view(-1, 1, 1, 1)
        scale = feat.sum(dim=1).view(-1, 1, 1, 1)
        eps = torch.where(drop, 0.5 * x, x * scale + t.view(-1, 1, 1, 1))
        v = torch.where(drop, torch.full_like(x, -0.75), torch.full_like(x, 0.25))
        return torch.cat([eps, v], dim=1)

    return model_fn


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, 2, 2, generator=g), torch.tensor([5, 10, 999]), torch.randn(B, 4, generator=g)


def test_scale_one_is_the_plain_model_fn():
    model_fn = toy_unet([])
    assert classifier_free(model_fn, 1.0) is model_fn


@pytest.mark.parametrize("scale", [0.0, 3.0, -0.5])
def test_guided_eps_is_the_classifier_free_combination(scale):
    calls = []
    x, t, feat = inputs()
    guided = classifier_free(toy_unet(calls), scale)(x, t, feat=feat, flag="kept")

    eps_c = x * feat.sum(dim=1).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1)
    eps_u = 0.5 * x
    assert guided.shape == (B, 2 * C, 2, 2)
    assert torch.equal(guided[:, :C], eps_u + scale * (eps_c - eps_u))
    assert torch.equal(guided[:, C:], torch.full_like(x, 0.25))  # variance of the conditional half

    assert len(calls) == 1  # one batched forward for both halves
    call = calls[0]
    assert torch.equal(call["x"], torch.cat([x, x])) and torch.equal(call["t"], torch.cat([t, t]))
    assert torch.equal(call["feat"], torch.cat([feat, feat]))
    assert call["drop_cond"].tolist() == [False] * B + [True] * B
    assert call["flag"] == "kept"


def test_scale_one_sampling_matches_unguided_sampling():
    diffusion = build_diffusion("linear", 1000)
    x, _, feat = inputs()

    def run(model_fn):
        generator = torch.Generator().manual_seed(1)
        noise = torch.randn(x.shape, generator=generator)
        return sample(diffusion, model_fn, noise, steps=5, generator=generator, cond={"feat": feat})

    assert torch.equal(run(classifier_free(toy_unet([]), 1.0)), run(toy_unet([])))
    assert not torch.allclose(run(classifier_free(toy_unet([]), 2.0)), run(toy_unet([])))


def test_bad_use_names_the_fix():
    x, t, feat = inputs()
    with pytest.raises(RCDMError, match="sets drop_cond itself"):
        classifier_free(toy_unet([]), 2.0)(x, t, feat=feat, drop_cond=torch.zeros(B, dtype=torch.bool))
    with pytest.raises(RCDMError, match="finite"):
        classifier_free(toy_unet([]), float("nan"))
