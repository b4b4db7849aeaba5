"""Gaussian diffusion with epsilon prediction and learned variance (IDDPM / ADM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rcdm_lab.diffusion.schedules import make_betas, respace_betas, respaced_timesteps
from rcdm_lab.errors import RCDMError

# Half the width of one 8-bit pixel bin once pixels are scaled to [-1, 1].
_HALF_BIN = 1.0 / 255.0


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Schedule coefficients near t = 0 and T lose too much in half precision: never go below float32.
    return torch.promote_types(x.dtype, torch.float32)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch one."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) in nats for pixels x in [-1, 1] quantised to 256 levels, under N(mean, exp(log_scale)^2).

    Each pixel owns a bin of width 2/255; the two extreme bins reach out to -inf / +inf so the mass sums to 1.
    """
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + _HALF_BIN)
    lower = inv_std * (x - mean - _HALF_BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)  # log(1 - Phi(lower)), stable in the far tail
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, torch.log(bin_mass)))


class GaussianDiffusion:
    """The forward process q and the model's reverse step p for one (possibly respaced) schedule.

    All indices `t` passed to methods are steps of *this* process (0..num_timesteps-1); the network must be
    called with `model_timesteps(t)`, the matching steps of the original process it was trained on.
    """

    def __init__(self, betas: Tensor, *, learn_sigma: bool = True, timestep_map: Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.num_timesteps = int(betas.numel())
        self.learn_sigma = learn_sigma
        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).cpu()
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError(f"timestep_map has shape {tuple(self.timestep_map.shape)}, want ({self.num_timesteps},)")

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: IDDPM substitutes beta~_1 so the log (and the learned-variance mix) stays finite.
        first_nonzero = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first_nonzero, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

        # DDPM's "fixed large" variance beta_t, with beta~_1 at t = 0 for a sensible decoder likelihood.
        self.fixed_large_variance = torch.cat([first_nonzero, betas[1:]])
        self.fixed_large_log_variance = torch.log(self.fixed_large_variance)
        self.log_betas = torch.log(betas)

        self._device_tables: dict[tuple[str, torch.device], Tensor] = {}

    # --- schedule lookup ------------------------------------------------------------------------------------

    def _table(self, name: str, device: torch.device) -> Tensor:
        # Cached per device so that indexing with a GPU `t` never forces a host/device sync.
        key = (name, device)
        if key not in self._device_tables:
            table: Tensor = getattr(self, name)
            if table.is_floating_point() and device.type == "mps":
                table = table.float()  # MPS has no float64
            self._device_tables[key] = table.to(device)
        return self._device_tables[key]

    def extract(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """Schedule buffer `name` at steps t, shaped (B, 1, ..., 1) to broadcast against `like`."""
        values = self._table(name, t.device)[t].to(_compute_dtype(like))
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Steps of this process -> steps of the original process (what the network is conditioned on)."""
        return self._table("timestep_map", t.device)[t]

    def respace(self, spacing: str | int) -> GaussianDiffusion:
        """A shorter process keeping the steps chosen by `spacing` (see `respaced_timesteps`)."""
        if not torch.equal(self.timestep_map, torch.arange(self.num_timesteps)):
            raise RCDMError(
                "this diffusion is already respaced; respace the full-length process built by build_diffusion"
            )
        kept = respaced_timesteps(self.num_timesteps, spacing)
        return GaussianDiffusion(
            respace_betas(self.betas, kept), learn_sigma=self.learn_sigma, timestep_map=torch.tensor(kept)
        )

    # --- forward process q ----------------------------------------------------------------------------------

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self.extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = 1.0 - self.extract("alphas_cumprod", t, x0)
        log_variance = torch.log(variance)
        return mean, variance.expand_as(mean), log_variance.expand_as(mean)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        return (
            self.extract("sqrt_alphas_cumprod", t, x0) * x0
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and (clipped) log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.extract("posterior_mean_coef1", t, x_t) * x0 + self.extract("posterior_mean_coef2", t, x_t) * x_t
        variance = self.extract("posterior_variance", t, x_t).expand_as(mean)
        log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(mean)
        return mean, variance, log_variance

    # --- reverse process p ----------------------------------------------------------------------------------

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def _split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        channels = x_t.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.shape[1] != expected:
            raise RCDMError(
                f"the model outputs {model_output.shape[1]} channels but the diffusion expects {expected} "
                f"({channels} image channels, learn_sigma={self.learn_sigma}); make the model's out_channels "
                f"and diffusion.learn_sigma agree"
            )
        if not self.learn_sigma:
            return model_output, None
        return model_output[:, :channels], model_output[:, channels:]

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> dict[str, Tensor]:
        """Parameters of p(x_{t-1} | x_t) from the raw network output.

        With learned sigma the output is [eps, v]; v in [-1, 1] interpolates the log-variance between
        beta~_t (v = -1) and beta_t (v = +1), IDDPM eq. 15.
        """
        dtype = _compute_dtype(x_t)
        x_t = x_t.to(dtype)
        eps, v = self._split_output(model_output.to(dtype), x_t)
        if v is None:
            log_variance = self.extract("fixed_large_log_variance", t, x_t).expand_as(x_t)
        else:
            frac = (v + 1) / 2
            max_log = self.extract("log_betas", t, x_t)
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            log_variance = frac * max_log + (1 - frac) * min_log

        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # --- training objective ---------------------------------------------------------------------------------

    def _vlb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_t in bits/dim per example: KL(q posterior || p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / math.log(2.0)
        decoder_nll = -mean_flat(
            discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        ) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(
        self,
        model_output: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor,
        vlb_weight: float = 0.001,
        min_snr_gamma: float | None = None,
    ) -> dict[str, Tensor]:
        """IDDPM's hybrid loss per example: mse on eps + vlb_weight * T * L_t (the variance-only VLB term).

        `min_snr_gamma` (Hang et al. 2023, "Min-SNR weighting"): the eps mse at step t is weighted by
        min(SNR_t, gamma) / SNR_t, SNR_t = alpha_bar_t / (1 - alpha_bar_t): the low-noise steps, where eps is
        nearly invisible in x_t and the image is almost given, stop dominating the gradient. The "mse" entry stays
        unweighted (comparable across weightings); "loss" carries the weight.
        """
        dtype = _compute_dtype(x_t)
        model_output, x0, x_t, noise = (tensor.to(dtype) for tensor in (model_output, x0, x_t, noise))
        eps, v = self._split_output(model_output, x_t)
        mse = mean_flat((noise - eps) ** 2)
        weighted = mse if min_snr_gamma is None else mse * self.min_snr_weight(t, min_snr_gamma).to(dtype)
        if v is None:
            with torch.no_grad():
                vlb = self._vlb_terms(model_output, x0, x_t, t)
            return {"loss": weighted, "mse": mse, "vlb": vlb}
        # Stop-gradient on eps: the VLB may only shape the variance, the mean is trained by the mse alone.
        vlb = self._vlb_terms(torch.cat([eps.detach(), v], dim=1), x0, x_t, t)
        return {"loss": weighted + vlb_weight * self.num_timesteps * vlb, "mse": mse, "vlb": vlb}

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """(B,) min(SNR_t, gamma) / SNR_t for the eps loss (1 wherever SNR_t <= gamma)."""
        if not gamma > 0:
            raise RCDMError(f"min_snr_gamma must be > 0 (the paper's default is 5), got {gamma}")
        alpha_bar = self._table("alphas_cumprod", t.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        return snr.clamp(max=gamma) / snr


def build_diffusion(schedule: str = "linear", num_timesteps: int = 1000, learn_sigma: bool = True) -> GaussianDiffusion:
    """The full-length process used for training; respace it for sampling."""
    return GaussianDiffusion(make_betas(schedule, num_timesteps), learn_sigma=learn_sigma)
