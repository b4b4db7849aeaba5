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
    """Tiny tensors: one torch thread is faster, and far faster while another process holds the second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder_file(tmp_path_factory) -> tuple[Path, PretrainModule]:
    """(encoder.pt of a hand-trained SimCLR module, the module itself in eval mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module = hand_trained("simclr")
    return export(module, tmp_path_factory.mktemp("encoder") / "encoder.pt"), module
