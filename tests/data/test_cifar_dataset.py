import functools
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as torchvision_cifar

from rcdm_lab.data.cifar import Cifar10Dataset
from rcdm_lab.data.datamodule import RCDMDataModule
from rcdm_lab.errors import RCDMError


def _offline(*args, **kwargs):
    raise urllib.error.URLError("no network in tests")


def test_offline_download_explains_how_to_provide_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision_cifar, "download_and_extract_archive", _offline)
    expected = r"could not download CIFAR-10 \(offline\?\).*cifar-10-batches-py.*data=folder data.dataset.root="
    with pytest.raises(RCDMError, match=expected):
        Cifar10Dataset(root=tmp_path, download=True)
    with pytest.raises(RCDMError, match=expected):
        Cifar10Dataset(root=tmp_path, split="val", download=False)


@pytest.fixture
def local_cifar(tmp_path, monkeypatch):
    """torchvision's python version of CIFAR-10, laid out as the archive unpacks: 2 random images per batch file."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8), "labels": [3, 7]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setattr(torchvision_cifar, "check_integrity", lambda *args, **kwargs: True)  # fake files, no md5
    return tmp_path


def test_local_python_version_gives_items_in_the_common_format(local_cifar):
    tmp_path = local_cifar
    train = Cifar10Dataset(root=tmp_path, image_size=16, download=False)
    val = Cifar10Dataset(root=tmp_path, split="val", image_size=32, download=False)
    assert (len(train), len(val)) == (10, 2)
    item = train[1]
    assert item["image"].shape == (3, 16, 16) and 0.0 <= float(item["image"].min()) <= 1.0
    assert item["labels"]["class"].dtype == torch.long and int(item["labels"]["class"]) == 7
    raw = torch.from_numpy(val.data[0]).permute(2, 0, 1).float() / 255
    assert torch.equal(val[0]["image"], raw)
    assert train.fingerprint() != val.fingerprint()
    assert train.fingerprint() != Cifar10Dataset(root=tmp_path, image_size=32, download=False).fingerprint()
    with pytest.raises(RCDMError, match="split must be one of"):
        Cifar10Dataset(root=tmp_path, split="extra", download=False)


@pytest.mark.parametrize("cache", [True, False])
def test_a_32px_model_is_trained_on_cifars_own_pixels(local_cifar, tmp_path, make_encoder, cache):
    # The encoder wants 224 px: the dataset must not upsample for it (and the diffusion target resample back).
    datamodule = RCDMDataModule(functools.partial(Cifar10Dataset, root=local_cifar, download=False), resolution=32,
                                batch_size=2, cache=cache, cache_dir=str(tmp_path / "cache"), flip=False)
    datamodule.attach_encoder(make_encoder(input_size=224))
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.dataset("train")
    stored = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float() / 127.5 - 1   # the uint8 pixels in [-1, 1]
    batch = next(iter(datamodule.train_dataloader()))
    assert torch.equal(batch["x0"], stored[batch["index"]])
    val = datamodule.val_items(2)
    assert torch.equal(val["x0"], torch.from_numpy(datamodule.dataset("val").data).permute(0, 3, 1, 2) / 127.5 - 1)
