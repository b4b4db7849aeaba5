"""The benchmark scripts' own logic: the line format the issue fixes, NFE as counted, ratios against goals."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
import torch

from rcdm_lab.diffusion import build_diffusion
from rcdm_lab.models import UNetModel
from rcdm_lab.pipeline import RCDMPipeline
from rcdm_testing import REPO


def load_script(name: str):
    # Imported by their own names, as they import each other, so that a spawned child (bench.isolated) can find
    # the function it is sent.
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def samplers():
    return load_script("samplers")


@pytest.fixture(scope="module")
def bench():
    return load_script("bench")


LINE = re.compile(r"^sampler=\S+ steps=\d+ nfe=\d+ guidance=\S+ mrr=\S+ mrr_ci=\[[\d.]+,[\d.]+\] top1=\S+ "
                  r"fid_enc=\S+ s_per_image=\S+$")


def test_a_setting_prints_one_line_of_key_value_pairs_without_spaces_inside_values(samplers):
    row = samplers.Row(sampler="dpmpp_2m", steps=20, nfe=40.0, guidance=8.0, mrr=0.0780, mrr_ci=[0.0597, 0.1025],
                       top1=0.0332, mean_rank=52.1, fid_enc=194.26, s_per_image=0.0924)
    assert LINE.match(row.line()), row.line()
    assert "nfe=40 guidance=8 " in row.line() and "mrr_ci=[0.0597,0.1025]" in row.line()


@pytest.mark.parametrize("guidance, per_step", [(1.0, 1), (3.0, 2)])
def test_nfe_is_counted_from_the_rows_the_unet_sees(samplers, guidance, per_step):
    torch.manual_seed(0)
    unet = UNetModel(image_size=8, model_channels=8, num_res_blocks=1, attention_resolutions=(), channel_mult=(1, 2),
                     num_heads=1, ssl_dim=4, learn_null_cond=True).eval()
    pipeline = RCDMPipeline(unet=unet, diffusion=build_diffusion(), encoder=None, resolution=8)
    counter = samplers.RowCounter(unet)
    samples = pipeline.sample(torch.randn(3, 4), 2, sampler="dpmpp_2m", steps=5, guidance=guidance, precision="32")
    counter.close()
    assert counter.rows / len(samples) == 5 * per_step   # a guided step runs both halves: 2 evaluations
    pipeline.sample(torch.randn(1, 4), 1, sampler="ddim", steps=2, precision="32")
    assert counter.rows / len(samples) == 5 * per_step   # closed: later sampling is not counted


def test_a_row_reports_its_ratio_against_its_goal(bench):
    def measured(value):
        return bench.Measurement("x", value, "img/s", "32", 2, 100.0)

    assert "2.00x (goal >= 3: NOT met)" in bench.Row("training", measured(10.0), measured(5.0), 3.0).line()
    assert "4.00x (goal >= 3: met)" in bench.Row("training", measured(20.0), measured(5.0), 3.0).line()
    assert bench.Row("sampling", measured(20.0), None, None).ratio is None


def test_isolated_measurements_run_in_their_own_process(bench):
    cost = bench.isolated(bench.measure_fid_cost, 40)
    assert cost.unit == "s" and cost.value > 0 and set(cost.detail) == {"fid_s", "kid_s"}
    assert cost.peak_memory_mb > 0
