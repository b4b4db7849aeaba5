import json
import warnings

import numpy as np
import pytest
import torch

from rcdm_lab.data import cache as cache_module
from rcdm_lab.data.cache import RepresentationCache, cache_key
from rcdm_lab.data.shapes import ShapesDataset
from rcdm_lab.errors import RCDMError, UnreadableImageError
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


def test_float32_keys_are_the_keys_existing_caches_were_built_under():
    identity = {"name": "tiny", "dim": 5}
    # Digests of the recipe before cache_dtype existed: float32 caches built then must still be found.
    assert cache_key(identity, "fp", 16) == cache_key(identity, "fp", 16, dtype="float32") == "5e08791d5d2db9ba"
    assert cache_key(identity, "fp", 16, flips=False) == "3aea1722e8750c8b"
    assert cache_key(identity, "fp", 16, dtype="float16") not in {"5e08791d5d2db9ba", "3aea1722e8750c8b"}
    with pytest.raises(RCDMError, match="data.cache_dtype='bfloat16'.*float16"):
        cache_key(identity, "fp", 16, dtype="bfloat16")


def test_float16_cache_takes_half_the_disk_and_reads_back_float32(tmp_path, dataset, make_encoder):
    full = _build(tmp_path, dataset, make_encoder())
    half = RepresentationCache.build(tmp_path, "half", dataset, make_encoder(), batch_size=BATCH, progress=False,
                                     meta={"split": "train"}, resolution=RESOLUTION, dtype="float16")
    assert full.reps.dtype == np.float32 and half.reps.dtype == np.float16 and half.dtype == "float16"
    header = 128  # .npy header
    assert (tmp_path / "half" / "reps.npy").stat().st_size - header == ((tmp_path / "k" / "reps.npy").stat().st_size
                                                                        - header) // 2
    assert "dtype" not in full.meta and half.meta["dtype"] == "float16"
    h16, h32 = half.get(3, True), full.get(3, True)
    assert h16.dtype == torch.float32 and not torch.equal(h16, h32)
    assert torch.allclose(h16, h32, rtol=2**-10, atol=1e-6)   # float16 keeps 11 significant bits
    assert torch.allclose(half.stats()[0], full.stats()[0], rtol=1e-3, atol=1e-5)
    with pytest.raises(RCDMError, match="cache_dtype"):
        RepresentationCache.build(tmp_path, "bad", dataset, make_encoder(), progress=False, dtype="int8")


def test_representations_beyond_float16s_range_are_refused(tmp_path, dataset, make_encoder):
    encoder = make_encoder()
    encoder.weight.mul_(1e6)
    with pytest.raises(RCDMError, match="float16's range.*data.cache_dtype=float32"):
        RepresentationCache.build(tmp_path, "big", dataset, encoder, batch_size=BATCH, progress=False,
                                  dtype="float16")


class _PartlyUnreadable(ShapesDataset):
    """Items 1 and 13 raise like a truncated file does."""

    def __getitem__(self, index):
        if index in (1, 13):
            raise UnreadableImageError(f"img_{index}.jpg", "truncated")
        return super().__getitem__(index)


def test_unreadable_images_become_recorded_zero_rows_and_one_warning(tmp_path, make_encoder):
    dataset = _PartlyUnreadable(image_size=SOURCE, num_train=ITEMS)
    crashing = make_encoder(fail_after=2)   # dies after the batches [0, 4) (with item 1) and [4, 8)
    with pytest.raises(RuntimeError, match="simulated crash"), warnings.catch_warnings():
        warnings.simplefilter("error")      # no warning for an unfinished build
        _build(tmp_path, dataset, crashing)
    with pytest.warns(UserWarning) as caught:
        cache = _build(tmp_path, dataset, make_encoder())
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith("2 unreadable image(s) skipped while caching representations of the train split")
    assert "img_1.jpg (truncated), img_13.jpg (truncated)" in messages[0]
    assert cache.unreadable == {1: ("img_1.jpg", "truncated"), 13: ("img_13.jpg", "truncated")}  # across the resume
    assert not cache.get(13, True).any() and cache.get(12, True).any() and cache.get(14, True).any()
    readable = cache.readable_indices()
    assert len(readable) == ITEMS - 2 and 1 not in readable and 13 not in readable
    reference = torch.from_numpy(np.array(cache.reps[readable, 0])).mean(0)
    assert torch.allclose(cache.stats()[0], reference, atol=1e-6)   # zero rows left out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _build(tmp_path, dataset, make_encoder())   # reopening a complete cache warns no more
