"""The real side of FID: guided-diffusion's reference batches, and our cache of a dataset's statistics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics import fid
from rcdm_lab.metrics.reference_stats import load_reference_npz


def _write_reference_batch(path, **overrides):
    """An .npz with exactly guided-diffusion's keys and shapes (VIRTUAL_imagenet128_labeled.npz's layout)."""
    generator = np.random.default_rng(0)
    factor = generator.standard_normal((2048, 64))
    arrays = {"mu": generator.random(2048), "sigma": factor @ factor.T / 64, "mu_s": generator.random(1280),
              "sigma_s": np.eye(1280), "arr_0": np.zeros((4, 128, 128, 3), dtype=np.uint8)}
    arrays.update(overrides)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return arrays


def test_a_guided_diffusion_reference_batch_loads_as_float64_statistics(tmp_path):
    arrays = _write_reference_batch(tmp_path / "VIRTUAL_imagenet128_labeled.npz")
    reference = load_reference_npz(tmp_path / "VIRTUAL_imagenet128_labeled.npz")
    assert reference.mean.shape == (2048,) and reference.covariance.shape == (2048, 2048)
    assert reference.mean.dtype == torch.float64 and np.array_equal(reference.mean.numpy(), arrays["mu"])
    assert reference.kid_features is None and not reference.complete
    # Against its own statistics the Fréchet distance is 0 (up to the eigenvalue round-off of a 2048-d sqrt).
    same = fid.frechet_distance_from_stats(reference.mean, reference.covariance, reference.mean,
                                           reference.covariance)
    assert abs(same) < 1e-6 * float(reference.covariance.trace())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"sigma": None}, "has no sigma"),
        ({"mu": None, "sigma": None}, "has no mu or sigma"),
        ({"mu": np.zeros((1, 2048))}, r"mu must be \(D,\)"),
        ({"sigma": np.eye(2047)}, r"\(2048,\) and \(2048, 2048\)"),
        ({"mu": np.full(2048, np.nan)}, "download it again"),
    ],
)
def test_bad_reference_batches_name_the_problem(tmp_path, overrides, match):
    _write_reference_batch(tmp_path / "ref.npz", **overrides)
    with pytest.raises(RCDMError, match=match):
        load_reference_npz(tmp_path / "ref.npz")


def test_missing_or_unreadable_reference_files(tmp_path):
    with pytest.raises(RCDMError, match="not found"):
        load_reference_npz(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RCDMError, match="cannot read"):
        load_reference_npz(tmp_path / "junk.npz")


# ------------------------------------------------------------------------------------------------ rcdm-eval metric=fid
class TinyEncoder(nn.Module):
    """A frozen-encoder stand-in: mean colour and a few pooled values, 12-d, with an identity for cache keys."""

    name, dim = "tiny", 12

    def forward(self, images):
        return torch.cat([images.mean((2, 3)), nn.functional.adaptive_avg_pool2d(images, 1).flatten(1) ** 2,
                          images.amax((2, 3)), images.amin((2, 3))], dim=1)

    def identity(self):
        return {"name": self.name, "dim": self.dim}


class FakeRun:
    """What fid.evaluate uses of a TrainedRun, with counted real-image reads and deterministic 'samples'."""

    def __init__(self, cache_dir, size=40):
        self.size, self.image_calls, self.sample_calls = size, 0, []
        self.pipeline = SimpleNamespace(device=torch.device("cpu"), encoder=TinyEncoder(), resolution=8)
        fingerprint = SimpleNamespace(fingerprint=lambda: "tiny-data-v1")
        self.datamodule = SimpleNamespace(cache_dir=str(cache_dir), dataset=lambda split: fingerprint)
        self.reps = torch.rand(size, 4, generator=torch.Generator().manual_seed(0))

    def split_size(self, split):
        return self.size

    def count(self, split, requested, what, default):
        return int(requested) if requested is not None else min(default, self.size)

    def representations(self, split):
        return self.reps

    def images(self, split, indices):
        self.image_calls += 1
        generator = torch.Generator().manual_seed(1)
        pool = torch.rand(self.size, 3, 8, 8, generator=generator)
        return pool[torch.as_tensor(indices)]

    def sample(self, h, k, settings):
        self.sample_calls.append(len(h))
        noise = torch.rand(len(h), 3, 8, 8, generator=torch.Generator().manual_seed(settings["seed"]))
        return (0.5 * noise + 0.5 * h[:, :3, None, None]).clamp(0, 1)


SETTINGS = {"num_samples": 30, "conditioning": "val", "kde_sigma": 0.01, "reference": "val", "features": "encoder",
            "kid_subset_size": 10, "is_splits": 2, "stream_batch_size": 8, "kid_max_features": 100,
            "cache_reference": True}


def test_evaluate_streams_the_samples_and_reuses_the_cached_real_statistics(tmp_path):
    run = FakeRun(tmp_path / "cache")
    first = fid.evaluate(run, SETTINGS, {"seed": 3}, tmp_path / "out")
    assert run.sample_calls == [8, 8, 8, 6]                     # sampled in batches, never all 30 at once
    reads = run.image_calls
    assert reads == 4 and first["reference_reused"] is False and first["num_real"] == first["num_fake"] == 30
    second = fid.evaluate(run, SETTINGS, {"seed": 3}, tmp_path / "out")
    assert run.image_calls == reads                             # the real side came from the cache
    assert second["reference_reused"] is True and second["reference_cache"] == first["reference_cache"]
    assert second["fid"] == first["fid"] and second["kid_mean"] == first["kid_mean"]
    assert "fid_reference" in first["reference_cache"] and first["fid"] > 0
    # The same numbers as the in-memory path on the same images (the cache must not change them).
    real = run.images("val", torch.linspace(0, 39, 30).round().long())
    fake = torch.cat([run.sample(run.reps[i:min(i + 8, 30)], 1, {"seed": 3 + n})
                      for n, i in enumerate(range(0, 30, 8))])
    direct = fid.image_quality(real, fake, features=TinyEncoder(), metrics=("fid", "kid"), kid_subset_size=10,
                               seed=3)
    assert first["fid"] == pytest.approx(direct["fid"], rel=1e-9)
    assert first["kid_mean"] == pytest.approx(direct["kid_mean"], rel=1e-9)
    # Another KID subset (like another extractor or dataset) is another key: the cache is not reused.
    before = run.image_calls
    other = fid.evaluate(run, {**SETTINGS, "kid_max_features": 10}, {"seed": 3}, tmp_path / "out")
    assert other["reference_reused"] is False and run.image_calls == before + 4


def test_evaluate_against_a_reference_batch_needs_inception_features(tmp_path):
    _write_reference_batch(tmp_path / "ref.npz")
    run = FakeRun(tmp_path / "cache")
    with pytest.raises(RCDMError, match="fid.features=inception"):
        fid.evaluate(run, {**SETTINGS, "reference": str(tmp_path / "ref.npz")}, {"seed": 0}, tmp_path / "out")
    assert run.image_calls == 0


def test_fid_reference_setting_accepts_splits_and_npz_paths():
    rule = next(rule for rule in fid.RULES if rule.key == "reference")
    for value in ("val", "train", "/data/VIRTUAL_imagenet128_labeled.npz"):
        rule.check(value)
    with pytest.raises(RCDMError, match="reference batch .npz"):
        rule.check("test")
