import math

import pytest
import torch

from rcdm_lab.diffusion import GaussianDiffusion, build_diffusion, make_betas
from rcdm_lab.errors import RCDMError

T = 1000


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return build_diffusion("linear", T)


def python_alpha_bar(betas: list[float], t: int) -> float:
    return math.prod(1 - b for b in betas[: t + 1])


def image_batch(t: torch.Tensor, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(t), 3, 4, 4, generator=g, dtype=dtype) * 1.6 - 0.8


# --- q(x_t | x_0) ------------------------------------------------------------------------------------------


def test_q_mean_variance_is_the_closed_form(diffusion):
    betas = make_betas("linear", T).tolist()
    t = torch.tensor([0, 1, 10, 500, 999])
    x0 = image_batch(t)
    mean, variance, log_variance = diffusion.q_mean_variance(x0, t)
    for i, step in enumerate(t.tolist()):
        alpha_bar = python_alpha_bar(betas, step)
        torch.testing.assert_close(mean[i], math.sqrt(alpha_bar) * x0[i], rtol=1e-10, atol=1e-12)
        assert variance[i].unique().tolist() == pytest.approx([1 - alpha_bar], rel=1e-10)
        assert log_variance[i].unique().tolist() == pytest.approx([math.log(1 - alpha_bar)], rel=1e-10)


def test_q_sample_has_the_right_empirical_moments(diffusion):
    t = torch.tensor([0, 100, 600, 999])
    draws = 200_000
    x0 = torch.tensor([0.9, -0.5, 0.3, 1.0], dtype=torch.float64)[:, None].expand(4, draws)
    noise = torch.randn(4, draws, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_t = diffusion.q_sample(x0, t, noise)
    mean, variance, _ = diffusion.q_mean_variance(x0, t)
    std_error = variance[:, 0].sqrt() / math.sqrt(draws)
    assert ((x_t.mean(dim=1) - mean[:, 0]).abs() < 5 * std_error).all()
    torch.testing.assert_close(x_t.var(dim=1), variance[:, 0], rtol=0.02, atol=0)


def test_q_sample_is_linear_in_x0_and_noise(diffusion):
    t = torch.tensor([250, 750])
    x0 = image_batch(t)
    noise = torch.randn_like(x0)
    ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


# --- q(x_{t-1} | x_t, x_0) ----------------------------------------------------------------------------------


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): multiply the two Gaussians in x_{t-1}."""
    betas = make_betas("linear", T).tolist()
    t = torch.tensor([1, 2, 50, 500, 999])
    x0 = image_batch(t)
    x_t = image_batch(t, seed=1) * 2
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        beta, alpha_bar_prev = betas[step], python_alpha_bar(betas, step - 1)
        # q(x_t | x_{t-1}) as a function of x_{t-1}: precision alpha/beta around x_t / sqrt(alpha).
        precision = (1 - beta) / beta + 1 / (1 - alpha_bar_prev)
        bayes_mean = (
            math.sqrt(1 - beta) / beta * x_t[i] + math.sqrt(alpha_bar_prev) / (1 - alpha_bar_prev) * x0[i]
        ) / precision
        torch.testing.assert_close(mean[i], bayes_mean, rtol=1e-9, atol=1e-12)
        assert variance[i].unique().tolist() == pytest.approx([1 / precision], rel=1e-9)
        assert log_variance[i].unique().tolist() == pytest.approx([-math.log(precision)], rel=1e-9)


def test_posterior_at_t0_returns_x0_and_clips_the_log_variance(diffusion):
    t = torch.tensor([0])
    x0 = image_batch(t)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x0 + 0.3, t)
    torch.testing.assert_close(mean, x0, rtol=0, atol=1e-12)
    assert bool((variance == 0).all())
    # beta~_0 = 0 has no log: IDDPM uses beta~_1 instead.
    torch.testing.assert_close(log_variance, torch.full_like(x0, math.log(diffusion.posterior_variance[1])))


# --- p(x_{t-1} | x_t) ---------------------------------------------------------------------------------------


def raw_output(eps: torch.Tensor, v: float) -> torch.Tensor:
    return torch.cat([eps, torch.full_like(eps, v)], dim=1)


def test_learned_variance_interpolates_between_beta_tilde_and_beta(diffusion):
    t = torch.tensor([1, 10, 500, 999])
    x_t = image_batch(t)
    eps = torch.zeros_like(x_t)
    beta = diffusion.betas[t].view(-1, 1, 1, 1).expand_as(x_t)
    beta_tilde = diffusion.posterior_variance[t].view(-1, 1, 1, 1).expand_as(x_t)
    torch.testing.assert_close(diffusion.p_mean_variance(raw_output(eps, 1.0), x_t, t)["variance"], beta)
    torch.testing.assert_close(diffusion.p_mean_variance(raw_output(eps, -1.0), x_t, t)["variance"], beta_tilde)
    middle = diffusion.p_mean_variance(raw_output(eps, 0.0), x_t, t)["variance"]
    torch.testing.assert_close(middle, (beta * beta_tilde).sqrt())


def test_variance_at_t0_uses_beta_tilde_1(diffusion):
    t = torch.tensor([0])
    x_t = image_batch(t)
    out = diffusion.p_mean_variance(raw_output(torch.zeros_like(x_t), -1.0), x_t, t)
    torch.testing.assert_close(out["variance"], torch.full_like(x_t, diffusion.posterior_variance[1].item()))


def test_fixed_large_variance_without_learned_sigma():
    fixed = build_diffusion("linear", T, learn_sigma=False)
    t = torch.tensor([0, 1, 700])
    x_t = image_batch(t)
    out = fixed.p_mean_variance(torch.zeros_like(x_t), x_t, t)
    expected = [fixed.posterior_variance[1], fixed.betas[1], fixed.betas[700]]
    for i, value in enumerate(expected):
        torch.testing.assert_close(out["variance"][i], torch.full_like(x_t[i], value.item()))


def test_p_mean_variance_recovers_x0_from_the_true_noise(diffusion):
    t = torch.tensor([3, 400, 900])
    x0 = image_batch(t)
    noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    out = diffusion.p_mean_variance(raw_output(noise, 0.0), x_t, t)
    torch.testing.assert_close(out["pred_xstart"], x0)
    torch.testing.assert_close(out["eps"], noise)
    true_mean, _, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(out["mean"], true_mean)


def test_clip_denoised_bounds_the_predicted_x0(diffusion):
    t = torch.tensor([900])
    x_t = image_batch(t)
    eps = torch.full_like(x_t, -30.0)  # points to an x_0 far outside [-1, 1]
    clipped = diffusion.p_mean_variance(raw_output(eps, 0.0), x_t, t)["pred_xstart"]
    raw = diffusion.p_mean_variance(raw_output(eps, 0.0), x_t, t, clip_denoised=False)["pred_xstart"]
    assert raw.max() > 1 and clipped.max() == 1


def test_half_precision_output_is_computed_in_float32(diffusion):
    t = torch.tensor([5, 50])
    x_t = image_batch(t, dtype=torch.float32)
    out = diffusion.p_mean_variance(raw_output(torch.randn_like(x_t), 0.5).bfloat16(), x_t.bfloat16(), t)
    assert all(value.dtype == torch.float32 for value in out.values())


def test_channel_mismatch_names_the_fix(diffusion):
    t = torch.tensor([5])
    x_t = image_batch(t)
    with pytest.raises(RCDMError, match="expects 6 .*learn_sigma=True"):
        diffusion.p_mean_variance(x_t, x_t, t)


# --- training losses ----------------------------------------------------------------------------------------


def losses_for(diffusion, t, eps_offset=0.0, v=-1.0, seed=0):
    x0 = image_batch(t, seed=seed, dtype=torch.float32)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    x_t = diffusion.q_sample(x0, t, noise)
    output = raw_output(noise + eps_offset, v).requires_grad_()
    return output, diffusion.training_losses(output, x0, x_t, t, noise)


def test_vlb_is_zero_for_the_true_eps_and_true_posterior_variance(diffusion):
    t = torch.tensor([1, 2, 100, 999])
    _, losses = losses_for(diffusion, t, v=-1.0)
    assert losses["vlb"].shape == (4,)
    assert losses["vlb"].abs().max() < 1e-6
    assert losses["mse"].abs().max() == 0


def test_vlb_for_a_wrong_variance_is_the_gaussian_kl(diffusion):
    t = torch.tensor([1, 3, 10])  # beta and beta~ only differ much early on
    vlb = losses_for(diffusion, t, v=1.0)[1]["vlb"].double()
    ratio = diffusion.betas[t] / diffusion.posterior_variance[t]  # model variance / true variance
    expected_bits = 0.5 * (ratio.log() + 1 / ratio - 1) / math.log(2)
    assert (expected_bits > 1e-3).all()
    torch.testing.assert_close(vlb, expected_bits, rtol=1e-4, atol=0)


def test_vlb_is_positive_when_the_mean_is_wrong(diffusion):
    t = torch.tensor([1, 100, 999])
    assert (losses_for(diffusion, t, eps_offset=0.1, v=-1.0)[1]["vlb"] > 1e-4).all()


def test_decoder_nll_is_the_discretized_gaussian_likelihood(diffusion):
    t = torch.tensor([0])
    x0 = torch.tensor([-1.0, -1 + 2 / 255, 0.0039215686, 1 - 4 / 255, 1.0]).view(1, 5, 1, 1)
    mean = torch.tensor([-0.99, -1.0, 0.01, 0.98, 0.995]).view(1, 5, 1, 1)
    # x_t chosen so that pred_xstart = `mean` under eps = 0, and the predicted posterior mean is coef1*mean.
    x_t = mean * diffusion.sqrt_alphas_cumprod[0].item()
    output = raw_output(torch.zeros_like(x0), -1.0)
    losses = diffusion.training_losses(output, x0, x_t, t, torch.zeros_like(x0))
    std = math.sqrt(diffusion.posterior_variance[1].item())

    def phi(z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    expected_bits = []
    for pixel, mu in zip(x0.flatten().tolist(), mean.flatten().tolist(), strict=True):
        upper = phi((pixel + 1 / 255 - mu) / std) if pixel < 0.999 else 1.0
        lower = phi((pixel - 1 / 255 - mu) / std) if pixel > -0.999 else 0.0
        expected_bits.append(-math.log2(upper - lower))
    assert losses["vlb"].item() == pytest.approx(sum(expected_bits) / 5, rel=1e-4)
    assert 0 < losses["vlb"].item() < 8  # better than a uniform guess over 256 levels


def test_decoder_nll_grows_when_the_mean_is_off(diffusion):
    t = torch.tensor([0, 0])
    good = losses_for(diffusion, t)[1]["vlb"]
    bad = losses_for(diffusion, t, eps_offset=5.0)[1]["vlb"]  # x_0 off by ~7 std
    assert torch.isfinite(good).all() and (good > 0).all() and (good < 8).all()
    assert (bad > good + 1).all()


def test_vlb_trains_only_the_variance_channels(diffusion):
    t = torch.tensor([0, 5, 500])
    output, losses = losses_for(diffusion, t, eps_offset=0.2, v=0.3)
    losses["vlb"].sum().backward()
    assert torch.equal(output.grad[:, :3], torch.zeros_like(output.grad[:, :3]))
    assert output.grad[:, 3:].abs().sum() > 0


def test_hybrid_loss_by_hand_for_an_eps_off_by_a_constant():
    # eps off by 0.1 everywhere, the true posterior variance (v = -1): mse = 0.01 and L_t is the KL of two
    # Gaussians of equal variance whose means differ by c1 * sqrt(1 - a_t) / sqrt(a_t) * 0.1, c1 = b_t sqrt(a_{t-1})
    # / (1 - a_t) -- derived here with Python floats from the betas, not with the diffusion's tables.
    for num_timesteps in (1000, 100):
        diffusion = build_diffusion("linear", num_timesteps)
        betas = make_betas("linear", num_timesteps).tolist()
        t = torch.tensor([5, num_timesteps // 2])
        _, losses = losses_for(diffusion, t, eps_offset=0.1, v=-1.0)
        for i, step in enumerate(t.tolist()):
            a_t, a_prev = python_alpha_bar(betas, step), python_alpha_bar(betas, step - 1)
            c1 = betas[step] * math.sqrt(a_prev) / (1 - a_t)
            mean_gap = c1 * math.sqrt(1 - a_t) / math.sqrt(a_t) * 0.1
            posterior_variance = betas[step] * (1 - a_prev) / (1 - a_t)
            kl_bits = mean_gap**2 / (2 * posterior_variance) / math.log(2)
            expected = 0.01 + 0.001 * num_timesteps * kl_bits
            assert float(losses["mse"][i]) == pytest.approx(0.01, rel=1e-4)
            assert float(losses["loss"][i]) == pytest.approx(expected, rel=1e-3)


def test_min_snr_weighting_by_hand():
    fixed = build_diffusion("linear", T, learn_sigma=False)
    # t = 0: alpha_bar = 1 - 1e-4, SNR = 9999 -> weight 5 / 9999; t = 999: SNR ~ 4e-5 < 5 -> weight 1.
    t = torch.tensor([0, 999])
    x0 = image_batch(t, dtype=torch.float32)
    noise = torch.randn_like(x0)
    output = noise + 0.1
    x_t = fixed.q_sample(x0, t, noise)
    weighted = fixed.training_losses(output, x0, x_t, t, noise, min_snr_gamma=5.0)
    torch.testing.assert_close(weighted["mse"], torch.full((2,), 0.01))
    torch.testing.assert_close(weighted["loss"], torch.tensor([0.01 * 5 / 9999, 0.01]), rtol=1e-4, atol=0)
    with pytest.raises(RCDMError, match="min_snr_gamma must be > 0"):
        fixed.training_losses(output, x0, x_t, t, noise, min_snr_gamma=0.0)


def test_without_learned_sigma_the_loss_is_the_mse():
    fixed = build_diffusion("linear", T, learn_sigma=False)
    t = torch.tensor([0, 10, 900])
    x0 = image_batch(t, dtype=torch.float32)
    noise = torch.randn_like(x0)
    output = (noise + 0.1).requires_grad_()
    losses = fixed.training_losses(output, x0, fixed.q_sample(x0, t, noise), t, noise)
    torch.testing.assert_close(losses["loss"], torch.full((3,), 0.01))
    assert torch.equal(losses["loss"], losses["mse"])
    assert torch.isfinite(losses["vlb"]).all() and not losses["vlb"].requires_grad
