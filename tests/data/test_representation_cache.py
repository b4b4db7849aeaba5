import json

import numpy as np
import pytest
import torch

from rcdm_lab.data import cache as cache_module
from rcdm_lab.data.cache import RepresentationCache, cache_key
from rcdm_lab.data.shapes import ShapesDataset
from rcdm_lab.errors import RCDMError
from rcdm_lab.resize import quantise, resize_to_resolution

SOURCE, RESOLUTION, ITEMS, BATCH = 24, 16, 20, 4


@pytest.fixture
def dataset():
    return ShapesDataset(image_size=SOURCE, num_train=ITEMS)


def _all_images(dataset):
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def _build(tmp_path, dataset, encoder, key="k"):
    return RepresentationCache.build(tmp_path, key, dataset, encoder, batch_size=BATCH, progress=False,
                                     meta={"split": "train"}, resolution=RESOLUTION)


def test_build_stores_h_of_each_image_and_of_its_mirror(tmp_path, dataset, make_encoder):
    encoder = make_encoder()
    cache = _build(tmp_path, dataset, encoder)
    images = _all_images(dataset)
    reference = make_encoder()
    assert len(cache) == ITEMS and cache.dim == encoder.dim
    for index in (0, 5, ITEMS - 1):
        assert torch.allclose(cache.get(index, False), reference(images[index : index + 1])[0], atol=1e-6)
        assert torch.allclose(cache.get(index, True), reference(images[index : index + 1].flip(-1))[0], atol=1e-6)
        assert not torch.allclose(cache.get(index, False), cache.get(index, True), atol=1e-3)
    expected = quantise(resize_to_resolution(images, RESOLUTION))
    assert torch.equal(torch.stack([cache.get_image(i, False) for i in range(ITEMS)]), expected)
    assert torch.equal(cache.get_image(3, True), expected[3].flip(-1))
    assert encoder.calls == ITEMS // BATCH  # one call per batch: image and mirror together
    meta = json.loads((tmp_path / "k" / "meta.json").read_text())
    assert (meta["num_items"], meta["dim"], meta["resolution"], meta["split"]) == (ITEMS, 6, RESOLUTION, "train")


def test_a_split_never_flipped_encodes_only_its_images(tmp_path, dataset, make_encoder):
    encoder, images, reference = make_encoder(), _all_images(dataset), make_encoder()
    cache = RepresentationCache.build(tmp_path, "noflip", dataset, encoder, batch_size=BATCH, progress=False,
                                      resolution=RESOLUTION, flips=False)
    assert cache.reps.shape == (ITEMS, 1, encoder.dim) and not cache.has_flips
    assert torch.allclose(cache.get(5, False), reference(images[5:6])[0], atol=1e-6)
    with pytest.raises(RuntimeError, match="without flipped images"):
        cache.get(5, True)
    fingerprint = dataset.fingerprint()
    identity = encoder.identity()
    assert cache_key(identity, fingerprint, RESOLUTION, flips=False) != cache_key(identity, fingerprint, RESOLUTION)


def test_reopening_a_complete_cache_calls_no_encoder(tmp_path, dataset, make_encoder):
    first = _build(tmp_path, dataset, make_encoder())
    again = make_encoder()
    reopened = _build(tmp_path, dataset, again)
    assert again.calls == 0
    assert torch.equal(reopened.get(7, True), first.get(7, True))
    assert torch.equal(RepresentationCache.open(tmp_path, "k").get(7, False), first.get(7, False))


def test_key_changes_with_encoder_dataset_and_resolution(tmp_path, dataset, make_encoder):
    trunk, head = make_encoder(layer="trunk").identity(), make_encoder(layer="head").identity()
    fingerprint = dataset.fingerprint()
    key = cache_key(trunk, fingerprint, RESOLUTION)
    assert key == cache_key(dict(reversed(list(trunk.items()))), fingerprint, RESOLUTION)
    assert cache_key(head, fingerprint, RESOLUTION) != key
    assert cache_key(trunk, ShapesDataset(split="val", image_size=SOURCE).fingerprint(), RESOLUTION) != key
    assert cache_key(trunk, fingerprint, 2 * RESOLUTION) != key
    _build(tmp_path, dataset, make_encoder(), key=key)
    other = make_encoder(layer="head")
    _build(tmp_path, dataset, other, key=cache_key(other.identity(), fingerprint, RESOLUTION))
    assert other.calls == ITEMS // BATCH


def test_interrupted_build_resumes_where_it_stopped(tmp_path, dataset, make_encoder):
    crashing = make_encoder(fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(tmp_path, dataset, crashing)
    assert json.loads((tmp_path / "k" / "progress.json").read_text()) == {"rows_done": 2 * BATCH,
                                                                          "complete": False}
    with pytest.raises(RCDMError, match="missing or incomplete"):
        RepresentationCache.open(tmp_path, "k")
    resumed_encoder = make_encoder()
    resumed = _build(tmp_path, dataset, resumed_encoder)
    assert resumed_encoder.calls == ITEMS // BATCH - 2
    fresh = _build(tmp_path / "fresh", dataset, make_encoder())
    assert np.allclose(np.asarray(resumed.reps), np.asarray(fresh.reps), atol=1e-6)
    assert np.array_equal(np.asarray(resumed.images), np.asarray(fresh.images))


def test_stats_equal_torch_mean_and_std_across_chunks(tmp_path, dataset, make_encoder, monkeypatch):
    monkeypatch.setattr(cache_module, "_STATS_CHUNK_ROWS", 7)  # 20 rows: chunks of 7, 7, 6 get merged
    cache = _build(tmp_path, dataset, make_encoder())
    unflipped = torch.from_numpy(np.array(cache.reps[:, 0]))
    mean, std = cache.stats()
    assert torch.allclose(mean, unflipped.mean(0), atol=1e-6)
    assert torch.allclose(std, unflipped.std(0), atol=1e-6)


def test_cache_without_images_and_bad_inputs(tmp_path, dataset, make_encoder):
    reps_only = RepresentationCache.build(tmp_path, "r", dataset, make_encoder(), batch_size=8, progress=False)
    assert not reps_only.has_images and not (tmp_path / "r" / "images.npy").exists()
    with pytest.raises(RCDMError, match="empty dataset"):
        RepresentationCache.build(tmp_path, "e", [], make_encoder(), progress=False)
    with pytest.raises(RCDMError, match="missing or incomplete"):
        RepresentationCache.open(tmp_path, "nothing")


def test_cache_pickles_without_its_memmaps(tmp_path, dataset, make_encoder):
    import pickle

    cache = _build(tmp_path, dataset, make_encoder())
    cache.get(0, False)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._reps is None and torch.equal(clone.get(4, True), cache.get(4, True))
