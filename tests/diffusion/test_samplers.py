import pytest
import torch

from rcdm_lab.diffusion import GaussianDiffusion, build_diffusion, ddim_sample, ddpm_sample, sample
from rcdm_lab.errors import RCDMError

SHAPE = (2, 3, 4, 4)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return build_diffusion("linear", 1000)


def alpha_bar_at(diffusion: GaussianDiffusion, t_model: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return diffusion.alphas_cumprod.to(like.dtype)[t_model].view(-1, *[1] * (like.ndim - 1))


def one_image_denoiser(diffusion: GaussianDiffusion, target: torch.Tensor):
    """The exact eps-predictor for a data set holding the single image `target` (original step indices)."""

    def denoiser(x, t_model, **cond):
        ab = alpha_bar_at(diffusion, t_model, x)
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return denoiser


def gaussian_data_denoiser(diffusion: GaussianDiffusion, data_std: float):
    """The exact E[eps | x_t] when the data are N(0, data_std^2)."""

    def denoiser(x, t_model, **cond):
        ab = alpha_bar_at(diffusion, t_model, x)
        eps = (1 - ab).sqrt() * x / (ab * data_std**2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return denoiser


def zero_denoiser(x, t_model, **cond):
    return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [10, "ddim25"])
def test_perfect_denoiser_of_one_image_returns_that_image(diffusion, sampler, steps):
    target = torch.rand(SHAPE, generator=seeded(0)) * 1.6 - 0.8
    x = sample(
        diffusion,
        one_image_denoiser(diffusion, target),
        SHAPE,
        sampler=sampler,
        steps=steps,
        generator=seeded(1),
    )
    torch.testing.assert_close(x, target, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_samples_of_gaussian_data_have_the_data_std(diffusion, sampler, eta):
    data_std = 0.5
    x = sample(
        diffusion,
        gaussian_data_denoiser(diffusion, data_std),
        (2048, 1, 1, 1),
        sampler=sampler,
        steps=100,
        eta=eta,
        generator=seeded(2),
        clip_denoised=False,
    )
    assert abs(x.mean().item()) < 0.03
    assert x.std().item() == pytest.approx(data_std, rel=0.1)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_same_seed_same_samples_different_seed_different(diffusion, sampler, eta):
    def run(seed):
        return sample(diffusion, zero_denoiser, SHAPE, sampler=sampler, steps=10, eta=eta, generator=seeded(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_ddim_eta0_is_deterministic_given_x_T(diffusion):
    noise = torch.randn(SHAPE, generator=seeded(5))
    respaced = diffusion.respace(10)
    first = ddim_sample(respaced, zero_denoiser, SHAPE, noise=noise, generator=seeded(6))
    second = ddim_sample(respaced, zero_denoiser, SHAPE, noise=noise, generator=seeded(7))
    assert torch.equal(first, second)
    stochastic = ddim_sample(respaced, zero_denoiser, SHAPE, eta=1.0, noise=noise, generator=seeded(6))
    assert not torch.allclose(first, stochastic)


def test_ddim_eta0_follows_the_ddim_update_with_clipped_x0(diffusion):
    """x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat; eps_hat re-derived from the clipped x0_hat."""
    respaced = diffusion.respace(3)
    x_T = torch.randn(SHAPE, generator=seeded(11), dtype=torch.float64)

    def constant_eps(x, t_model, **cond):
        return torch.cat([torch.full_like(x, 0.3), torch.zeros_like(x)], dim=1)

    got = ddim_sample(respaced, constant_eps, SHAPE, noise=x_T)

    kept = respaced.timestep_map.tolist()
    alpha_bar = [diffusion.alphas_cumprod[k].item() for k in kept]
    x = x_T
    for i in reversed(range(len(kept))):
        ab, ab_prev = alpha_bar[i], alpha_bar[i - 1] if i > 0 else 1.0
        x0_hat = ((x - (1 - ab) ** 0.5 * 0.3) / ab**0.5).clamp(-1, 1)
        eps_hat = (x - ab**0.5 * x0_hat) / (1 - ab) ** 0.5
        x = ab_prev**0.5 * x0_hat + (1 - ab_prev) ** 0.5 * eps_hat
    assert kept == [0, 500, 999]
    torch.testing.assert_close(got, x)


def test_ddpm_uses_noise_as_x_T(diffusion):
    respaced = diffusion.respace(5)
    noise = torch.randn(SHAPE, generator=seeded(8))
    same = [ddpm_sample(respaced, zero_denoiser, SHAPE, noise=noise, generator=seeded(9)) for _ in range(2)]
    other = ddpm_sample(respaced, zero_denoiser, SHAPE, noise=noise * -1, generator=seeded(9))
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], other)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_denoiser_sees_original_steps_and_untouched_conditioning(diffusion, sampler):
    feature = torch.randn(SHAPE[0], 7)
    calls = []

    def recording(x, t_model, **cond):
        calls.append((t_model.clone(), cond))
        return zero_denoiser(x, t_model)

    sample(diffusion, recording, SHAPE, sampler=sampler, steps=10, feat=feature, tag="hello", dtype=torch.float32)
    kept = diffusion.respace(10).timestep_map.tolist()
    assert [t.tolist() for t, _ in calls] == [[step] * SHAPE[0] for step in reversed(kept)]
    assert all(t.dtype == torch.long for t, _ in calls)
    assert all(set(cond) == {"feat", "tag"} and cond["feat"] is feature for _, cond in calls)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_progress_bar_does_not_change_the_samples(diffusion, sampler):
    def run(progress):
        return sample(
            diffusion, zero_denoiser, SHAPE, sampler=sampler, steps=5, generator=seeded(10), progress=progress
        )

    assert torch.equal(run(True), run(False))


def test_device_and_dtype_follow_noise_or_the_keywords(diffusion):
    respaced = diffusion.respace(3)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    assert ddpm_sample(respaced, zero_denoiser, SHAPE, noise=noise).dtype == torch.float64
    assert ddim_sample(respaced, zero_denoiser, SHAPE, dtype=torch.float64).dtype == torch.float64
    assert ddim_sample(respaced, zero_denoiser, SHAPE).dtype == torch.float32


def test_bad_requests_name_the_fix(diffusion):
    with pytest.raises(RCDMError, match="did you mean 'ddpm'"):
        sample(diffusion, zero_denoiser, SHAPE, sampler="ddmp")
    with pytest.raises(RCDMError, match="cannot read timestep spacing"):
        sample(diffusion, zero_denoiser, SHAPE, steps="fast")
    with pytest.raises(RCDMError, match="cannot keep 2000"):
        sample(diffusion, zero_denoiser, SHAPE, steps=2000)
    with pytest.raises(RCDMError, match="only applies to sampler='ddim'"):
        sample(diffusion, zero_denoiser, SHAPE, sampler="ddpm", eta=0.5)
    with pytest.raises(RCDMError, match=r"eta must lie in \[0, 1\]"):
        sample(diffusion, zero_denoiser, SHAPE, sampler="ddim", eta=1.5)
    with pytest.raises(RCDMError, match="noise has shape"):
        sample(diffusion, zero_denoiser, SHAPE, noise=torch.zeros(1, 3, 4, 4))
    with pytest.raises(RCDMError, match="already respaced"):
        sample(diffusion.respace(50), zero_denoiser, SHAPE, steps=10)
