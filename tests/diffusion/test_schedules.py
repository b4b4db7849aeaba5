import math

import pytest
import torch

from rcdm_lab.diffusion import build_diffusion, make_betas, respace_betas, respaced_timesteps
from rcdm_lab.errors import RCDMError


@pytest.mark.parametrize("num_timesteps", [1000, 500, 4000])
def test_linear_endpoints_follow_iddpm_scaling(num_timesteps):
    betas = make_betas("linear", num_timesteps)
    scale = 1000 / num_timesteps
    assert betas.dtype == torch.float64 and betas.shape == (num_timesteps,)
    assert betas[0].item() == pytest.approx(scale * 1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(scale * 0.02, rel=1e-12)
    steps = betas[1:] - betas[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-9, atol=0)


def test_cosine_alpha_bar_follows_its_formula():
    num_timesteps = 1000
    betas = make_betas("cosine", num_timesteps)
    alpha_bar = torch.cumprod(1 - betas, dim=0)

    def formula(t):
        return (
            math.cos((t / num_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
            / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
        )

    # The last beta is clipped at 0.999 (alpha_bar(T) = 0 would make it 1), every earlier one is exact.
    for t in [0, 1, 10, 250, 500, 900, 998]:
        assert alpha_bar[t].item() == pytest.approx(formula(t + 1), rel=1e-9, abs=1e-15)
    assert betas[-1].item() == 0.999


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_betas_lie_strictly_between_zero_and_one(schedule, num_timesteps):
    betas = make_betas(schedule, num_timesteps)
    assert bool((betas > 0).all()) and bool((betas < 1).all())


def test_unknown_schedule_names_the_fix():
    with pytest.raises(RCDMError, match="did you mean 'linear'.*Known: linear, cosine"):
        make_betas("linaer")


def test_linear_schedule_too_short_is_refused():
    with pytest.raises(RCDMError, match="num_timesteps > 20"):
        make_betas("linear", 20)
    with pytest.raises(RCDMError, match="positive"):
        make_betas("cosine", 0)


@pytest.mark.parametrize("spacing", [100, "100"])
def test_even_spacing_keeps_first_and_last(spacing):
    kept = respaced_timesteps(1000, spacing)
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    assert kept == sorted(set(kept))


def test_even_spacing_known_values():
    assert respaced_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    assert respaced_timesteps(1000, 1) == [0]


# guided-diffusion's space_timesteps(num_timesteps, spacing), as printed by the official respace.py.
OFFICIAL_KEPT_STEPS = {
    (1000, "25"): [0, 42, 83, 125, 166, 208, 250, 291, 333, 375, 416, 458, 500, 541, 583, 624, 666, 708, 749, 791,
                   832, 874, 916, 957, 999],
    (1000, "10,15,20"): [0, 37, 74, 111, 148, 185, 222, 259, 296, 333, 334, 358, 381, 405, 429, 453, 476, 500, 524,
                         547, 571, 595, 619, 642, 666, 667, 684, 702, 719, 737, 754, 772, 789, 807, 824, 842, 859,
                         877, 894, 912, 929, 947, 964, 982, 999],
    (1000, "ddim20"): list(range(0, 1000, 50)),
    (250, "7,11"): [0, 21, 41, 62, 83, 103, 124, 125, 137, 150, 162, 175, 187, 199, 212, 224, 237, 249],
    (4000, "30"): [0, 138, 276, 414, 552, 689, 827, 965, 1103, 1241, 1379, 1517, 1655, 1793, 1931, 2068, 2206, 2344,
                   2482, 2620, 2758, 2896, 3034, 3172, 3310, 3447, 3585, 3723, 3861, 3999],
}


@pytest.mark.parametrize("num_timesteps, spacing", list(OFFICIAL_KEPT_STEPS))
def test_respacing_keeps_the_official_steps(num_timesteps, spacing):
    assert respaced_timesteps(num_timesteps, spacing) == OFFICIAL_KEPT_STEPS[num_timesteps, spacing]


def test_sections_split_the_process_evenly():
    kept = respaced_timesteps(300, "10,15,20")
    assert len(kept) == 45
    for (low, high), count in zip([(0, 100), (100, 200), (200, 300)], [10, 15, 20], strict=True):
        section = [k for k in kept if low <= k < high]
        assert len(section) == count
        assert section[0] == low and section[-1] == high - 1


@pytest.mark.parametrize("count", [25, 50, 100, 1000])
def test_ddim_spacing_is_a_constant_stride_from_zero(count):
    kept = respaced_timesteps(1000, f"ddim{count}")
    assert len(kept) == count
    assert kept == list(range(0, 1000, 1000 // count))


@pytest.mark.parametrize(
    "num_timesteps, spacing, message",
    [
        (1000, "abc", "cannot read timestep spacing"),
        (1000, "ddimx", "cannot read timestep spacing"),
        (1000, 0, ">= 1"),
        (1000, "5,0", ">= 1"),
        (1000, 1001, "cannot keep 1001"),
        (1000, "600,600", "cannot keep 600"),
        (10, "ddim7", "no constant stride"),  # strides 1..10 give 10, 5, 4, 3, 2, ..., 1 steps
        (10, "ddim11", "only has 10"),
    ],
)
def test_impossible_spacing_is_refused(num_timesteps, spacing, message):
    with pytest.raises(RCDMError, match=message):
        respaced_timesteps(num_timesteps, spacing)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", [10, "ddim25", "5,10,20"])
def test_respaced_alpha_bar_matches_the_original_at_kept_steps(schedule, spacing):
    betas = make_betas(schedule, 1000)
    kept = respaced_timesteps(1000, spacing)
    new_betas = respace_betas(betas, kept)
    assert new_betas.shape == (len(kept),)
    original = torch.cumprod(1 - betas, dim=0)[kept]
    torch.testing.assert_close(torch.cumprod(1 - new_betas, dim=0), original, rtol=1e-9, atol=0)


def test_respaced_diffusion_maps_back_to_original_steps():
    full = build_diffusion("linear", 1000)
    respaced = full.respace(10)
    kept = respaced_timesteps(1000, 10)
    assert respaced.num_timesteps == 10 and respaced.learn_sigma
    assert respaced.timestep_map.dtype == torch.long
    assert respaced.timestep_map.tolist() == kept
    t = torch.tensor([0, 3, 9])
    assert respaced.model_timesteps(t).tolist() == [kept[0], kept[3], kept[9]]
    assert full.model_timesteps(t).tolist() == [0, 3, 9]
    torch.testing.assert_close(respaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12, atol=0)


def test_respacing_twice_is_refused():
    with pytest.raises(RCDMError, match="already respaced"):
        build_diffusion().respace(100).respace(10)
