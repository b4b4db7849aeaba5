import pytest
import torch

from rcdm_lab.diffusion import (
    GaussianDiffusion,
    build_diffusion,
    check_sampler_options,
    ddim_sample,
    ddpm_sample,
    sample,
)
from rcdm_lab.errors import RCDMError

SHAPE = (2, 3, 4, 4)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return build_diffusion("linear", 1000)


def alpha_bar_at(diffusion: GaussianDiffusion, t_model: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return diffusion.alphas_cumprod.to(like.dtype)[t_model].view(-1, *[1] * (like.ndim - 1))


def one_image_model(diffusion: GaussianDiffusion, target: torch.Tensor):
    """The exact eps-predictor for a data set holding the single image `target` (original step indices)."""

    def model_fn(x, t_model, **cond):
        ab = alpha_bar_at(diffusion, t_model, x)
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return model_fn


def gaussian_data_model(diffusion: GaussianDiffusion, data_std: float):
    """The exact E[eps | x_t] when the data are N(0, data_std^2)."""

    def model_fn(x, t_model, **cond):
        ab = alpha_bar_at(diffusion, t_model, x)
        eps = (1 - ab).sqrt() * x / (ab * data_std**2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return model_fn


def zero_model(x, t_model, **cond):
    return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def x_T_and_generator(seed: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Generator]:
    """x_T drawn from a seeded generator that then goes on to the sampler, as RCDMPipeline.sample does."""
    generator = seeded(seed)
    return torch.randn(shape, generator=generator), generator


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
@pytest.mark.parametrize("steps", [10, "ddim25"])
def test_perfect_denoiser_of_one_image_returns_that_image(diffusion, sampler, steps):
    target = torch.rand(SHAPE, generator=seeded(0)) * 1.6 - 0.8
    noise, generator = x_T_and_generator(1)
    x = sample(
        diffusion,
        one_image_model(diffusion, target),
        noise,
        sampler=sampler,
        steps=steps,
        generator=generator,
    )
    torch.testing.assert_close(x, target, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}),
                                              ("dpmpp_2m", {}), ("dpmpp_2m_sde", {}), ("unipc", {})])
def test_samples_of_gaussian_data_have_the_data_std(diffusion, sampler, options):
    data_std = 0.5
    noise, generator = x_T_and_generator(2, (2048, 1, 1, 1))
    x = sample(
        diffusion,
        gaussian_data_model(diffusion, data_std),
        noise,
        sampler=sampler,
        steps=100,
        generator=generator,
        clip_denoised=False,
        **options,
    )
    assert abs(x.mean().item()) < 0.03
    assert x.std().item() == pytest.approx(data_std, rel=0.1)


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp_2m", {}),
                                              ("dpmpp_2m_sde", {}), ("unipc", {})])
def test_same_seed_same_samples_different_seed_different(diffusion, sampler, options):
    def run(seed):
        noise, generator = x_T_and_generator(seed)
        return sample(diffusion, zero_model, noise, sampler=sampler, steps=10, generator=generator, **options)

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_ddim_eta0_is_deterministic_given_x_T(diffusion):
    noise = torch.randn(SHAPE, generator=seeded(5))
    respaced = diffusion.respace(10)
    first = ddim_sample(respaced, zero_model, noise, generator=seeded(6), cond={})
    second = ddim_sample(respaced, zero_model, noise, generator=seeded(7), cond={})
    assert torch.equal(first, second)
    stochastic = ddim_sample(respaced, zero_model, noise, eta=1.0, generator=seeded(6), cond={})
    assert not torch.allclose(first, stochastic)


def test_ddim_eta0_follows_the_ddim_update_with_clipped_x0(diffusion):
    """x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat; eps_hat re-derived from the clipped x0_hat."""
    respaced = diffusion.respace(3)
    x_T = torch.randn(SHAPE, generator=seeded(11), dtype=torch.float64)

    def constant_eps(x, t_model, **cond):
        return torch.cat([torch.full_like(x, 0.3), torch.zeros_like(x)], dim=1)

    got = ddim_sample(respaced, constant_eps, x_T, generator=None, cond={})

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
    same = [ddpm_sample(respaced, zero_model, noise, generator=seeded(9), cond={}) for _ in range(2)]
    other = ddpm_sample(respaced, zero_model, noise * -1, generator=seeded(9), cond={})
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], other)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_denoiser_sees_original_steps_and_untouched_conditioning(diffusion, sampler):
    feature = torch.randn(SHAPE[0], 7)
    calls = []

    def recording(x, t_model, **cond):
        calls.append((t_model.clone(), cond))
        return zero_model(x, t_model)

    sample(diffusion, recording, torch.randn(SHAPE), sampler=sampler, steps=10, cond={"feat": feature, "tag": "hello"})
    kept = diffusion.respace(10).timestep_map.tolist()
    assert [t.tolist() for t, _ in calls] == [[step] * SHAPE[0] for step in reversed(kept)]
    assert all(t.dtype == torch.long for t, _ in calls)
    assert all(set(cond) == {"feat", "tag"} and cond["feat"] is feature for _, cond in calls)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("name", ["noise", "device", "generator", "steps"])
def test_a_conditioning_named_like_an_option_reaches_the_model(diffusion, sampler, name):
    seen = []

    def recording(x, t_model, **cond):
        seen.append(cond)
        return zero_model(x, t_model)

    value = torch.full((SHAPE[0], 2), 7.0)
    sample(diffusion, recording, torch.randn(SHAPE), sampler=sampler, steps=3, cond={name: value})
    assert len(seen) == 3 and all(set(cond) == {name} and cond[name] is value for cond in seen)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_callback_sees_every_step_once_with_its_t(diffusion, sampler):
    steps = []
    noise, generator = x_T_and_generator(12)
    final = sample(diffusion, zero_model, noise, sampler=sampler, steps=4, generator=generator,
                   callback=steps.append)
    kept = diffusion.respace(4).timestep_map.tolist()
    assert [step.i for step in steps] == [0, 1, 2, 3]
    assert [step.t for step in steps] == list(reversed(kept)) == [999, 666, 333, 0]
    assert torch.equal(steps[0].x, noise)   # the first step starts from x_T
    assert all(step.pred_xstart.shape == SHAPE and step.pred_xstart.abs().max() <= 1 for step in steps)
    # The last step of both samplers returns its (clipped) x_0 prediction.
    assert torch.equal(final, steps[-1].pred_xstart)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_progress_bar_does_not_change_the_samples(diffusion, sampler):
    def run(progress):
        noise, generator = x_T_and_generator(10)
        return sample(
            diffusion, zero_model, noise, sampler=sampler, steps=5, generator=generator, progress=progress
        )

    assert torch.equal(run(True), run(False))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_samples_have_the_dtype_of_the_noise(diffusion, dtype):
    respaced = diffusion.respace(3)
    noise = torch.randn(SHAPE, dtype=dtype)
    assert ddpm_sample(respaced, zero_model, noise, generator=None, cond={}).dtype == dtype
    assert ddim_sample(respaced, zero_model, noise, generator=None, cond={}).dtype == dtype


def test_bad_requests_name_the_fix(diffusion):
    noise = torch.randn(SHAPE)
    with pytest.raises(RCDMError, match="did you mean 'ddpm'"):
        sample(diffusion, zero_model, noise, sampler="ddmp")
    with pytest.raises(RCDMError, match="cannot read timestep spacing"):
        sample(diffusion, zero_model, noise, steps="fast")
    with pytest.raises(RCDMError, match="cannot keep 2000"):
        sample(diffusion, zero_model, noise, steps=2000)
    with pytest.raises(RCDMError, match="only applies to sampler='ddim'"):
        sample(diffusion, zero_model, noise, sampler="ddpm", eta=0.5)
    with pytest.raises(RCDMError, match=r"eta must lie in \[0, 1\]"):
        sample(diffusion, zero_model, noise, sampler="ddim", eta=1.5)
    with pytest.raises(RCDMError, match="already respaced"):
        sample(diffusion.respace(50), zero_model, noise, steps=10)


def test_ddim_called_directly_still_checks_eta(diffusion):
    noise = torch.randn(SHAPE)
    for eta in (1.5, -1.0):
        with pytest.raises(RCDMError, match=r"eta must lie in \[0, 1\]"):
            ddim_sample(diffusion.respace(10), zero_model, noise, generator=None, cond={}, eta=eta)


def test_an_option_the_sampler_does_not_take_is_refused_naming_what_it_takes(diffusion):
    noise = torch.randn(SHAPE)
    with pytest.raises(RCDMError, match=r"^sampler 'ddim' has no option 'etta'; did you mean 'eta'\? "
                                        r"It takes: eta, clip_denoised$"):
        sample(diffusion, zero_model, noise, sampler="ddim", etta=0.5)
    with pytest.raises(RCDMError, match=r"^eta=0\.5 only applies to sampler='ddim' or sampler='dpmpp_2m_sde'; "
                                        r"sampler 'ddpm' takes: clip_denoised$"):
        check_sampler_options("ddpm", {"eta": 0.5})
    check_sampler_options("ddpm", {"eta": None})   # None: the sampler's default, so one block can list eta


def uniform_log_snr_diffusion(num_timesteps: int = 960) -> GaussianDiffusion:
    """A schedule whose steps are equal in log-SNR (lambda from 6 down to -6): respaced, every step has the same h,
    so a solver's global error shrinks as h^order when the steps double (ADM's schedules crowd the end)."""
    log_snr = torch.linspace(6, -6, num_timesteps, dtype=torch.float64)
    alpha_bar = torch.sigmoid(log_snr)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return GaussianDiffusion(1 - alpha_bar / previous)


def exact_gaussian_flow(respaced: GaussianDiffusion, noise: torch.Tensor, data_std: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T for N(0, data_std^2) data, then E[x_0 | x_{t_0}] at the last step.

    For Gaussian data the ODE keeps x_t / c_t constant, c_t = sqrt(alpha_bar_t data_std^2 + 1 - alpha_bar_t).
    """
    first, last = respaced.alphas_cumprod[0], respaced.alphas_cumprod[-1]
    c_first, c_last = (first * data_std**2 + 1 - first).sqrt(), (last * data_std**2 + 1 - last).sqrt()
    return first.sqrt() * data_std**2 / c_first * noise / c_last


@pytest.mark.parametrize("sampler, order, step_counts", [("ddim", 1, (24, 48, 96)), ("dpmpp_2m", 2, (24, 48, 96)),
                                                        ("unipc", 3, (12, 24, 48))])
def test_deterministic_solvers_converge_to_the_exact_flow_at_their_order(sampler, order, step_counts):
    # UniPC's second-order predictor plus its corrector is third order; it reaches float64's floor sooner, hence
    # fewer steps. Measured ratios: DDIM 2.01 / 2.01, DPM-Solver++(2M) 3.72 / 3.95, UniPC 8.06 / 11.8.
    diffusion, data_std = uniform_log_snr_diffusion(), 0.5
    noise = torch.randn(4, 3, 8, 8, generator=seeded(0), dtype=torch.float64)
    errors = []
    for steps in step_counts:
        x = sample(diffusion, gaussian_data_model(diffusion, data_std), noise, sampler=sampler, steps=steps,
                   clip_denoised=False)
        errors.append((x - exact_gaussian_flow(diffusion.respace(steps), noise, data_std)).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
    # Doubling the steps divides the error by about 2^order.
    assert all(2**order * 0.75 < ratio < 2**order * 2 for ratio in ratios), (errors, ratios)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_each_step_is_one_network_evaluation(diffusion, sampler):
    calls = []

    def counting(x, t_model, **cond):
        calls.append(len(x))
        return zero_model(x, t_model, **cond)

    noise, generator = x_T_and_generator(5)
    sample(diffusion, counting, noise, sampler=sampler, steps=15, generator=generator)
    assert calls == [len(noise)] * 15


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_multistep_solvers_are_closer_to_the_exact_flow_than_ddim_on_the_trained_schedule(diffusion, steps, solver):
    # ADM's linear schedule ends with one long step in log-SNR; extrapolating x_0 across it (second order there)
    # overshot: DPM-Solver++(2M) 0.61 at 10 steps, worse than DDIM's 0.43. First order on that step: 0.34 (UniPC
    # 0.32; 20 steps: 0.074 and 0.069 vs 0.22).
    data_std = 0.5
    noise = torch.randn(4, 3, 8, 8, generator=seeded(0), dtype=torch.float64)
    exact = exact_gaussian_flow(diffusion.respace(steps), noise, data_std)
    errors = {sampler: (sample(diffusion, gaussian_data_model(diffusion, data_std), noise, sampler=sampler,
                               steps=steps, clip_denoised=False) - exact).abs().max().item()
              for sampler in ("ddim", solver)}
    assert errors[solver] < 0.8 * errors["ddim"], errors


def test_sde_solver_with_eta_zero_is_the_ode_solver(diffusion):
    noise, generator = x_T_and_generator(7)
    model = gaussian_data_model(diffusion, 0.5)
    ode = sample(diffusion, model, noise, sampler="dpmpp_2m", steps=12)
    sde = sample(diffusion, model, noise, sampler="dpmpp_2m_sde", steps=12, generator=generator, eta=0.0)
    assert torch.equal(ode, sde)


def test_sde_solver_reaches_the_data_distribution_in_fewer_steps_than_ddpm():
    # Stochastic samplers do not follow one path, so convergence is in distribution: the std of 200 000 samples of
    # N(0, 0.5^2) data (sampling error ~0.001). Measured |std - 0.5| at 5 / 10 / 20 steps on the uniform log-SNR
    # schedule: SDE-DPM-Solver++(2M) 0.164 / 0.012 / 0.002, DDPM 0.085 / 0.042 / 0.022.
    diffusion, data_std = uniform_log_snr_diffusion(), 0.5
    errors = {}
    for sampler in ("dpmpp_2m_sde", "ddpm"):
        for steps in (5, 10, 20):
            noise, generator = x_T_and_generator(0, (200_000, 1, 1, 1))
            x = sample(diffusion, gaussian_data_model(diffusion, data_std), noise.double(), sampler=sampler,
                       steps=steps, generator=generator, clip_denoised=False)
            errors[sampler, steps] = abs(x.std().item() - data_std)
    assert errors["dpmpp_2m_sde", 5] > errors["dpmpp_2m_sde", 10] > errors["dpmpp_2m_sde", 20], errors
    assert errors["dpmpp_2m_sde", 20] < 0.006, errors
    assert errors["ddpm", 20] > 3 * errors["dpmpp_2m_sde", 20], errors


def test_sde_solver_refuses_an_eta_outside_zero_to_one(diffusion):
    noise, generator = x_T_and_generator(0)
    with pytest.raises(RCDMError, match=r"eta must lie in \[0, 1\]"):
        sample(diffusion, zero_model, noise, sampler="dpmpp_2m_sde", steps=5, generator=generator, eta=1.5)
