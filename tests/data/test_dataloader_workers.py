import pytest
import torch

from rcdm_lab.data import datamodule
from rcdm_lab.data.datamodule import cache_build_workers


@pytest.mark.parametrize("cores, threads, asked, expected", [
    (2, 2, 2, 0),     # a 2-core machine: the encoder's two threads take both cores, decoding stays in-process
    (16, 8, 4, 4),    # enough free cores: as asked
    (16, 14, 4, 2),   # only what is left
    (4, 2, 0, 0),     # never more than asked
])
def test_cpu_cache_builds_use_only_the_cores_the_encoder_leaves(monkeypatch, cores, threads, asked, expected):
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(datamodule.torch, "get_num_threads", lambda: threads)
    assert cache_build_workers(asked, torch.device("cpu")) == expected


def test_a_gpu_encoder_gets_the_workers_asked_for(monkeypatch):
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: 2)
    assert cache_build_workers(2, torch.device("cuda", 0)) == 2
