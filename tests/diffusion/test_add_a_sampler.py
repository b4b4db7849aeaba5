"""Adding a sampler is one function and one decorator line; it is then selectable by name everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_lab.diffusion import SAMPLERS, build_diffusion, register_sampler, sample
from rcdm_lab.diffusion.samplers import reverse_steps
from rcdm_lab.errors import RCDMError
from rcdm_lab.pipeline import RCDMPipeline

RESOLUTION = 4


class ConstantImageUNet(nn.Module):
    """The exact eps-predictor for data where conditioning h is the constant image tanh(mean h)."""

    def __init__(self, diffusion) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", diffusion.alphas_cumprod.float())
        self.unused = nn.Parameter(torch.zeros(()))   # RCDMPipeline.device reads the parameters

    def forward(self, x, t, feat, drop_cond=None):
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        target = torch.tanh(feat.mean(dim=1)).view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


@pytest.fixture
def toy_x0_euler():
    """A deterministic sampler in a few lines: each step jumps to x0_hat and re-noises it with its own eps."""

    @register_sampler("toy_x0_euler")
    def toy(diffusion, model_fn, noise, *, generator, cond, callback=None, progress=False, clip_denoised=True):
        x = noise
        for i in reverse_steps(diffusion, progress, "toy_x0_euler"):
            t = torch.full((len(x),), i, dtype=torch.long)
            out = diffusion.p_mean_variance(model_fn(x, diffusion.model_timesteps(t), **cond), x, t, clip_denoised)
            alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x)
            x = alpha_bar_prev.sqrt() * out["pred_xstart"] + (1 - alpha_bar_prev).sqrt() * out["eps"]
        return x

    yield "toy_x0_euler"
    del SAMPLERS["toy_x0_euler"]   # the registry is process-wide: leave it as the other tests expect it


@pytest.fixture(scope="module")
def pipeline() -> RCDMPipeline:
    diffusion = build_diffusion("linear", 1000)
    return RCDMPipeline(unet=ConstantImageUNet(diffusion), diffusion=diffusion, encoder=None, resolution=RESOLUTION)


def test_a_toy_sampler_registered_in_one_module_runs_by_name_through_sample_and_the_pipeline(toy_x0_euler, pipeline):
    h = torch.tensor([[0.2, 0.4], [-1.0, -0.6], [0.0, 0.1]])
    images = pipeline.sample(h, 2, sampler=toy_x0_euler, steps=10, precision="32")
    expected = torch.tanh(h.mean(dim=1)).repeat_interleave(2).view(-1, 1, 1, 1).expand(6, 3, RESOLUTION, RESOLUTION)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-4)

    noise = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    direct = sample(pipeline.diffusion, pipeline.unet, noise, sampler=toy_x0_euler, steps=10,
                    cond={"feat": h[:2]}, clip_denoised=False)
    torch.testing.assert_close(direct, expected[::2][:2], rtol=0, atol=1e-4)


def test_an_option_the_chosen_sampler_does_not_take_is_refused_naming_the_sampler_and_its_options(toy_x0_euler,
                                                                                                   pipeline):
    with pytest.raises(RCDMError, match=r"^eta=0\.5 only applies to sampler='ddim' or sampler='dpmpp_2m_sde'; "
                                        r"sampler 'toy_x0_euler' takes: clip_denoised$"):
        pipeline.sample(torch.zeros(1, 2), sampler=toy_x0_euler, steps=2, eta=0.5)
    with pytest.raises(RCDMError, match=r"^sampler 'toy_x0_euler' has no option 'temperature'; "
                                        r"It takes: clip_denoised$"):
        pipeline.sample(torch.zeros(1, 2), sampler=toy_x0_euler, steps=2, temperature=0.7)


def test_a_sampler_option_without_a_default_is_refused_when_registering():
    with pytest.raises(TypeError, match="options need defaults, eta has none"):
        @register_sampler("toy_without_defaults")
        def toy(diffusion, model_fn, noise, *, generator, cond, callback=None, progress=False, eta):
            return noise
    assert "toy_without_defaults" not in SAMPLERS


def test_a_sampler_without_the_shared_parameters_is_refused_when_registering():
    with pytest.raises(TypeError, match="must take the keyword-only parameters callback, progress"):
        @register_sampler("toy_without_callback")
        def toy(diffusion, model_fn, noise, *, generator, cond):
            return noise
    assert "toy_without_callback" not in SAMPLERS


def test_the_pipeline_callback_sees_each_step_of_each_batch(pipeline):
    seen = []
    pipeline.sample(torch.zeros(3, 2), sampler="ddim", steps=4, batch_size=2, precision="32",
                    callback=lambda step: seen.append((step.i, step.t, len(step.x))))
    kept = list(reversed(pipeline.diffusion.respace(4).timestep_map.tolist()))
    assert seen == [(i, t, 2) for i, t in enumerate(kept)] + [(i, t, 1) for i, t in enumerate(kept)]


def test_the_pipeline_refuses_noise_of_the_wrong_shape(pipeline):
    with pytest.raises(RCDMError, match=r"noise has shape \(1, 3, 4, 4\) but samples of shape \(2, 3, 4, 4\)"):
        pipeline.sample(torch.zeros(2, 2), sampler="ddim", steps=2, noise=torch.zeros(1, 3, 4, 4))
