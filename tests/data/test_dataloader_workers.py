from functools import partial

import pytest
import torch

from rcdm_lab.data import datamodule
from rcdm_lab.data.datamodule import dataloader_workers


@pytest.mark.parametrize("cores, threads, asked, expected", [
    (2, 2, 2, 0),     # a 2-core machine: the encoder's two threads take both cores, decoding stays in-process
    (16, 8, 4, 4),    # enough free cores: as asked
    (16, 14, 4, 2),   # only what is left
    (4, 2, 0, 0),     # never more than asked
])
def test_cpu_cache_builds_use_only_the_cores_the_encoder_leaves(monkeypatch, cores, threads, asked, expected):
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(datamodule.torch, "get_num_threads", lambda: threads)
    assert dataloader_workers(asked, torch.device("cpu")) == expected


def test_a_gpu_encoder_gets_the_workers_asked_for(monkeypatch):
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: 2)
    assert dataloader_workers(2, torch.device("cuda", 0)) == 2


def test_training_loaders_on_a_cpu_leave_the_cores_to_the_training_threads(tmp_path, monkeypatch, make_encoder):
    from rcdm_lab.data import RCDMDataModule
    from rcdm_lab.data.shapes import ShapesDataset

    shapes = partial(ShapesDataset, num_train=16, num_val=4)
    module = RCDMDataModule(shapes, resolution=16, batch_size=4, num_workers=2, cache_dir=str(tmp_path),
                            cache_batch_size=8)
    module.attach_encoder(make_encoder(), device="cpu")
    module.prepare_data()
    module.setup("fit")
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(datamodule.torch, "get_num_threads", lambda: 2)
    loader = module.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (0, False, False)
    monkeypatch.setattr(datamodule.os, "cpu_count", lambda: 8)
    loader = module.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers) == (2, True)
