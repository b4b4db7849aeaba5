"""Samplers: one registry, one signature. DDPM (ancestral) and DDIM are registered here; a new one is one function.

Every sampler is `fn(diffusion, model_fn, noise, *, generator, cond, callback=None, progress=False, **options)`:

- `diffusion` is the (respaced) process to walk backwards through, every one of its steps;
- `model_fn(x_t, t_model, **cond)` returns the network's raw output (eps, plus the variance channels with learned
  sigma), called with the ORIGINAL step indices (`diffusion.model_timesteps(t)`) and `cond` untouched;
- `noise` is x_T: its shape, device and dtype are the samples';
- `cond` is the conditioning, in its own mapping so that no conditioning name can be mistaken for an option;
- `callback(StepInfo)` is called once per step; `progress` shows a progress bar;
- the keyword-only parameters after those are the sampler's own options (with defaults): `register_sampler` reads
  them from the signature, so `sample()` refuses an option the chosen sampler does not take.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rcdm_lab.diffusion.gaussian import GaussianDiffusion
from rcdm_lab.diffusion.schedules import _did_you_mean
from rcdm_lab.errors import RCDMError

ModelOutputFn = Callable[..., Tensor]
"""`model_fn(x_t, t_model, **cond) -> raw network output` (not x̂0: the sampler derives that from the output)."""


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees, once per step, before x moves on to x_{t-1}."""

    i: int                # 0 for the first (noisiest) step, up to the number of steps - 1
    t: int                # the step in the original schedule: what the network was conditioned on
    x: Tensor             # x_t, the samples entering this step
    pred_xstart: Tensor   # the step's prediction of x_0 (clipped to [-1, 1] when the sampler clips)


StepCallback = Callable[[StepInfo], None]


class SamplerFn(Protocol):
    def __call__(self, diffusion: GaussianDiffusion, model_fn: ModelOutputFn, noise: Tensor, *,
                 generator: torch.Generator | None, cond: Mapping[str, Any], callback: StepCallback | None = None,
                 progress: bool = False, **options: Any) -> Tensor: ...


# The keyword parameters every sampler takes; the other keyword-only ones are its options.
_SHARED_PARAMETERS = frozenset({"generator", "cond", "callback", "progress"})


@dataclass(frozen=True)
class RegisteredSampler:
    name: str
    fn: SamplerFn
    defaults: Mapping[str, Any]                          # its options and their defaults
    check: Callable[..., None] | None = None             # check(**options) raises RCDMError on a bad value

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` checked against what this sampler takes; None means "the sampler's default" and is dropped."""
        given = {name: value for name, value in given.items() if value is not None}
        for name, value in given.items():
            if name not in self.defaults:
                raise RCDMError(_not_an_option(self, name, value))
        if self.check is not None:
            self.check(**{**self.defaults, **given})
        return given


SAMPLERS: dict[str, RegisteredSampler] = {}


def register_sampler(name: str, *, check: Callable[..., None] | None = None) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: make `fn` the sampler `name` (`sample(sampler=name)`, `sampling.sampler=name`).

    Its keyword-only parameters beyond generator/cond/callback/progress are its options and need defaults;
    `check(**options)` validates their values (also before a command starts). The function runs without autograd.
    """

    def register(fn: SamplerFn) -> SamplerFn:
        if name in SAMPLERS:
            raise ValueError(f"a sampler named {name!r} is already registered ({SAMPLERS[name].fn.__qualname__})")
        parameters = inspect.signature(fn).parameters.values()
        keyword_only = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not keyword_only >= _SHARED_PARAMETERS:
            raise TypeError(f"sampler {name!r} must take the keyword-only parameters "
                            f"{', '.join(sorted(_SHARED_PARAMETERS - keyword_only))} (see SamplerFn)")
        defaults = {p.name: p.default for p in parameters
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _SHARED_PARAMETERS}
        missing = [option for option, default in defaults.items() if default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"sampler {name!r}: options need defaults, {', '.join(missing)} has none")

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Tensor:
            # The option check runs on every call, also when the function is called directly rather than by name.
            if check is not None:
                check(**{**defaults, **{option: kwargs[option] for option in defaults if option in kwargs}})
            with torch.no_grad():
                return fn(*args, **kwargs)

        SAMPLERS[name] = RegisteredSampler(name, checked, defaults, check)
        return checked

    return register


def registered_sampler(name: str) -> RegisteredSampler:
    """The sampler called `name`, or an RCDMError with the closest registered name."""
    if name not in SAMPLERS:
        raise RCDMError(f"unknown sampler {name!r}; {_did_you_mean(str(name), list(SAMPLERS))}"
                        f"Known: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_sampler_options(sampler: str, options: Mapping[str, Any]) -> None:
    """RCDMError for an unknown sampler or an option it does not take (also checked before a command starts)."""
    registered_sampler(sampler).options(options)


def _not_an_option(sampler: RegisteredSampler, name: str, value: Any) -> str:
    takes = ", ".join(sampler.defaults) or "no options"
    others = [other for other in SAMPLERS.values() if name in other.defaults]
    if others:
        where = " or ".join(f"sampler={other.name!r}" for other in others)
        return f"{name}={value!r} only applies to {where}; sampler {sampler.name!r} takes: {takes}"
    return f"sampler {sampler.name!r} has no option {name!r}; {_did_you_mean(name, list(sampler.defaults))}" \
           f"It takes: {takes}"


def sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    sampler: str = "ddpm",
    steps: int | str = 100,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """Respace the full-length `diffusion` to `steps` and run the registered `sampler` from x_T = `noise`.

    `options` are the sampler's own (DDIM: eta; both: clip_denoised); one it does not take is refused.
    """
    chosen = registered_sampler(sampler)
    checked = chosen.options(options)
    return chosen.fn(diffusion.respace(steps), model_fn, noise, generator=generator, cond=cond or {},
                     callback=callback, progress=progress, **checked)


# ------------------------------------------------------------------------------------------------ the samplers
def reverse_steps(diffusion: GaussianDiffusion, progress: bool, desc: str) -> Iterable[int]:
    """The steps of `diffusion` from the last (noisiest) to 0, behind a progress bar when asked."""
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    return tqdm(steps, desc=desc, leave=False) if progress else steps


def _predict(diffusion: GaussianDiffusion, model_fn: ModelOutputFn, x: Tensor, i: int, cond: Mapping[str, Any],
             clip_denoised: bool, callback: StepCallback | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Step i's t (per batch item) and p(x_{t-1} | x_t); tells the callback."""
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    t_model = diffusion.model_timesteps(t)
    out = diffusion.p_mean_variance(model_fn(x, t_model, **cond), x, t, clip_denoised)
    if callback is not None:
        callback(StepInfo(i=diffusion.num_timesteps - 1 - i, t=int(t_model[0]), x=x, pred_xstart=out["pred_xstart"]))
    return t, out


@register_sampler("ddpm")
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    generator: torch.Generator | None,
    cond: Mapping[str, Any],
    callback: StepCallback | None = None,
    progress: bool = False,
    clip_denoised: bool = True,
) -> Tensor:
    """Ancestral sampling through every step of `diffusion` (respace it first for fewer steps)."""
    x = noise
    for i in reverse_steps(diffusion, progress, "ddpm"):
        _, out = _predict(diffusion, model_fn, x, i, cond, clip_denoised, callback)
        x_prev = out["mean"]
        if i > 0:  # the last step returns the mean: adding noise there would only blur x_0
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_prev.dtype)
            x_prev = x_prev + torch.exp(0.5 * out["log_variance"]) * z
        x = x_prev.to(x.dtype)
    return x


def _check_ddim_options(*, eta: float, **_other_options: Any) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise RCDMError(f"DDIM eta must lie in [0, 1] (0 = deterministic, 1 = DDPM-like), got {eta!r}")


@register_sampler("ddim", check=_check_ddim_options)
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    generator: torch.Generator | None,
    cond: Mapping[str, Any],
    callback: StepCallback | None = None,
    progress: bool = False,
    eta: float = 0.0,
    clip_denoised: bool = True,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): eta = 0 is deterministic given x_T, eta = 1 is DDPM-like."""
    x = noise
    for i in reverse_steps(diffusion, progress, "ddim"):
        t, out = _predict(diffusion, model_fn, x, i, cond, clip_denoised, callback)
        # Re-derive eps from the (possibly clipped) x_0 so both DDIM terms describe the same x_0.
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = diffusion.extract("alphas_cumprod", t, x)
        alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        x_prev = out["pred_xstart"] * alpha_bar_prev.sqrt() + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        if i > 0 and eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x_prev.dtype)
            x_prev = x_prev + sigma * z
        x = x_prev.to(x.dtype)
    return x


def _log_snr_terms(alpha_bar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lambda, alpha, sigma) of alpha_bar, in float64: lambda = log(alpha / sigma)."""
    alpha_bar = alpha_bar.double()
    return 0.5 * torch.log(alpha_bar / (1 - alpha_bar)), alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


@register_sampler("dpmpp_2m")
def dpmpp_2m_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    generator: torch.Generator | None,
    cond: Mapping[str, Any],
    callback: StepCallback | None = None,
    progress: bool = False,
    clip_denoised: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE solved in log-SNR time, second order, multistep.

    Data prediction from the network's eps half (the learned-variance half is not used, as the authors prescribe for
    ADM models), so x_0 clipping applies before the update and classifier-free guidance works unchanged. One network
    evaluation per step: the previous step's x_0 supplies the second-order term (the first and the last ODE step are
    first order, i.e. DDIM's update). The step at t = 0 returns its x_0 prediction, as DDIM does.
    """
    return _dpmpp_2m(diffusion, model_fn, noise, generator, cond, callback, progress, clip_denoised, 0.0, "dpmpp_2m")


def _check_sde_options(*, eta: float, **_other_options: Any) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise RCDMError(f"dpmpp_2m_sde eta must lie in [0, 1] (0 = the ODE solver dpmpp_2m, 1 = the reverse SDE), "
                        f"got {eta!r}")


@register_sampler("dpmpp_2m_sde", check=_check_sde_options)
def dpmpp_2m_sde_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    generator: torch.Generator | None,
    cond: Mapping[str, Any],
    callback: StepCallback | None = None,
    progress: bool = False,
    eta: float = 1.0,
    clip_denoised: bool = True,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5): DPM-Solver++(2M)'s data-prediction multistep update on the
    reverse SDE, which injects fresh noise every step as ancestral DDPM does; eta = 0 is dpmpp_2m exactly.

    Why beside the ODE solvers: on the demo model at guidance 1 every ODE sampler (DDIM, DPM-Solver++, UniPC, up to
    50 steps) was significantly less faithful than DDPM's 100 ancestral steps, and this one was not
    (experiments/samplers), at one network evaluation per step. Same conventions as dpmpp_2m: first order on the
    first and last steps, the step at t = 0 returns its x_0 (no noise there).
    """
    return _dpmpp_2m(diffusion, model_fn, noise, generator, cond, callback, progress, clip_denoised, eta,
                     "dpmpp_2m_sde")


def _dpmpp_2m(diffusion: GaussianDiffusion, model_fn: ModelOutputFn, noise: Tensor,
              generator: torch.Generator | None, cond: Mapping[str, Any], callback: StepCallback | None,
              progress: bool, clip_denoised: bool, eta: float, desc: str) -> Tensor:
    """The one DPM-Solver++(2M) loop; eta = 0 the ODE, eta > 0 the SDE (no noise is drawn at eta = 0)."""
    x, previous_x0, previous_h = noise, None, None
    for i in reverse_steps(diffusion, progress, desc):
        t, out = _predict(diffusion, model_fn, x, i, cond, clip_denoised, callback)
        x0 = out["pred_xstart"]
        if i == 0:
            return x0.to(x.dtype)
        lam, _, sigma = _log_snr_terms(diffusion.extract("alphas_cumprod", t, x))
        lam_next, alpha_next, sigma_next = _log_snr_terms(diffusion.extract("alphas_cumprod_prev", t, x))
        h = lam_next - lam   # > 0: the step in log-SNR towards the data
        if previous_x0 is None or i == 1:
            # First order on the first step (no history) and on the last ODE step: on ADM's schedules its step in
            # log-SNR to the respaced t = 0 is several times the previous one, and extrapolating x_0 that far
            # overshoots (the authors' `lower_order_final`; on Gaussian data at 10 steps: 0.61 from the exact flow,
            # worse than DDIM's 0.43, against 0.34 with it -- tests/diffusion/test_samplers.py).
            x0_term = x0
        else:
            r = previous_h / h
            x0_term = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
        # x_next = sigma_next / sigma e^(-eta h) x + alpha_next (1 - e^(-(1 + eta) h)) x0_term
        #          + sigma_next sqrt(1 - e^(-2 eta h)) z
        x_next = sigma_next / sigma * torch.exp(-eta * h) * x - alpha_next * torch.expm1(-(1 + eta) * h) * x0_term
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_next = x_next + sigma_next * (-torch.expm1(-2 * eta * h)).sqrt() * z
        x = x_next.to(x.dtype)
        previous_x0, previous_h = x0, h
    return x


@register_sampler("unipc")
def unipc_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelOutputFn,
    noise: Tensor,
    *,
    generator: torch.Generator | None,
    cond: Mapping[str, Any],
    callback: StepCallback | None = None,
    progress: bool = False,
    clip_denoised: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023): second-order multistep predictor with its corrector, data prediction ("bh2" B(h)).

    The corrector reuses the network evaluation the next step needs anyway, so a step still costs one evaluation.
    Like DPM-Solver++(2M): the first and the last ODE step are first order, and the step at t = 0 returns its x_0.
    """
    x, previous = noise, None      # previous: the last step's start, for the corrector
    history: list[tuple[Tensor, Tensor]] = []   # (lambda, x_0) of the last two evaluations, newest last
    for i in reverse_steps(diffusion, progress, "unipc"):
        t, out = _predict(diffusion, model_fn, x, i, cond, clip_denoised, callback)
        x0 = out["pred_xstart"]
        if i == 0:
            return x0.to(x.dtype)
        lam, _, sigma = _log_snr_terms(diffusion.extract("alphas_cumprod", t, x))
        if previous is not None:   # UniC: correct x_t with the evaluation just made at it
            x = _unipc_update(previous, x0).to(x.dtype)
        history = [*history[-1:], (lam, x0)]   # a second-order step needs only the last two evaluations
        lam_next, alpha_next, sigma_next = _log_snr_terms(diffusion.extract("alphas_cumprod_prev", t, x))
        order = 2 if len(history) >= 2 and i > 1 else 1
        previous = {"x": x, "sigma_ratio": sigma_next / sigma, "alpha_next": alpha_next, "h": lam_next - lam,
                    "m0": x0, "earlier": [(lam_e - lam, m_e) for lam_e, m_e in history[-order:-1]]}
        x = _unipc_update(previous, None).to(x.dtype)   # UniP: predict x at the next step
    return x


def _unipc_update(step: dict[str, Any], x0_next: Tensor | None) -> Tensor:
    """UniP (x0_next None) or UniC (with the x_0 evaluated at the predicted point) for one step of `step`."""
    h = step["h"]
    hh = -h   # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    b_h = h_phi_1   # B(h) = e^(-h) - 1: the authors' "bh2" variant
    # r_k = (lambda_k - lambda_s0) / h of the earlier evaluations, and 1 for the new one when correcting.
    ratios = [lam_gap / h for lam_gap, _ in step["earlier"]]
    differences = [(m_e - step["m0"]) / r for (_, m_e), r in zip(step["earlier"], ratios, strict=True)]
    base = step["sigma_ratio"] * step["x"] - step["alpha_next"] * h_phi_1 * step["m0"]
    if x0_next is None:
        if not differences:
            return base
        return base - step["alpha_next"] * b_h * 0.5 * differences[0]   # UniP-2: rho = 1/2
    ratios.append(torch.ones_like(h))
    differences.append(x0_next - step["m0"])
    if len(ratios) == 1:
        rhos = [0.5]
    else:   # solve R rho = b with R_ij = r_j^i, b_i = i! phi_{i+1}(hh) / B(h)
        h_phi_k, factorial, rows, rhs = h_phi_1 / hh - 1, 1, [], []
        for power in range(1, len(ratios) + 1):
            rows.append(torch.stack([r.flatten()[0] ** (power - 1) for r in ratios]))
            rhs.append((h_phi_k * factorial / b_h).flatten()[0])
            factorial *= power + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        rhos = list(torch.linalg.solve(torch.stack(rows), torch.stack(rhs)))
    correction = sum(rho * d for rho, d in zip(rhos, differences, strict=True))
    return base - step["alpha_next"] * b_h * correction
