"""Fixtures of the pretraining tests: one thread per test, and one exported tiny encoder for the session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from pretrain_testing import export, hand_trained

from rcdm_lab.pretrain.module import PretrainModule


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one torch thread is faster, and far faster while another process holds the second core.

    oneDNN off as well: on a 2-core AVX2 EPYC, torch 2.13's oneDNN convolutions on these 4-8-channel 16 px networks
    corrupted the heap now and then in backward ("double free or corruption", 1 run in 3-10; also on the commit
    before issue 13), and never with oneDNN off (0 of 10). The native kernels are as fast at this size.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.backends.mkldnn.flags(enabled=False):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder_file(tmp_path_factory) -> tuple[Path, PretrainModule]:
    """(encoder.pt of a hand-trained SimCLR module, the module itself in eval mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module = hand_trained("simclr")
    return export(module, tmp_path_factory.mktemp("encoder") / "encoder.pt"), module
