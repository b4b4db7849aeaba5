"""metric=factors: kept / varies / chance / ceiling, the classifier cache, evaluate and rcdm-eval end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from rcdm_lab.data import ShapesDataset
from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics import factor_classifier as fc
from rcdm_lab.metrics import factors
from rcdm_lab.metrics.factor_classifier import ClassifierSettings, FactorClassifier, FactorSpec, predict_factors
from rcdm_lab.metrics.factors import agreement, chance_kept, chance_varies, factor_agreement, kept, varies
from rcdm_lab.resize import to_x0

TINY = ClassifierSettings(width=4, epochs=1, batch_size=16)


# ------------------------------------------------------------------------------------------ pure functions
def test_kept_counts_each_conditionings_samples_that_match_its_truth():
    predicted = torch.tensor([[0, 0, 1, 2], [3, 3, 3, 3], [1, 0, 0, 0]])
    assert kept(predicted, torch.tensor([0, 3, 2])).tolist() == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="truth"):
        kept(predicted, torch.tensor([0, 3]))


def test_varies_is_zero_for_identical_samples_and_one_for_all_different():
    assert varies(torch.full((5, 4), 2)).tolist() == [0.0] * 5
    assert varies(torch.arange(12).view(3, 4)).tolist() == [1.0] * 3
    # [0, 0, 1]: of the 3 pairs, (0, 1) twice differ -> 2/3; [0, 0, 1, 1]: 4 of 6 pairs differ.
    assert varies(torch.tensor([[0, 0, 1]])).tolist() == [pytest.approx(2 / 3)]
    assert varies(torch.tensor([[0, 0, 1, 1]])).tolist() == [pytest.approx(4 / 6)]
    with pytest.raises(RCDMError, match="at least 2 samples"):
        varies(torch.zeros(3, 1, dtype=torch.long))


def test_chance_is_the_sum_of_squared_marginals():
    truth = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    assert chance_kept(truth, 4) == pytest.approx(0.5**2 + 0.3**2 + 0.2**2)
    assert chance_varies(truth, 4) == pytest.approx(1 - 0.38)
    assert chance_kept(torch.arange(8), 8) == pytest.approx(1 / 8)


def test_agreement_of_perfect_samples_and_the_k1_case():
    truth = torch.tensor([0, 1, 2, 1, 0])
    result = agreement(truth[:, None].repeat(1, 3), truth, 3, ceiling_predicted=truth)
    assert result["kept"] == 1.0 and result["varies"] == 0.0 and result["ceiling"] == 1.0
    assert result["kept_ci95"] == [1.0, 1.0] and result["varies_ci95"] == [0.0, 0.0]
    assert result["kept_above_chance"] == pytest.approx(1 - (0.4**2 + 0.4**2 + 0.2**2))
    single = agreement(truth[:, None], truth, 3)
    assert single["kept"] == 1.0 and single["varies"] is None and single["varies_ci95"] is None
    assert single["ceiling"] is None


# ----------------------------------------------------------- an oracle: images that carry their own labels
SPECS = [FactorSpec("shape", "class", ("a", "b", "c", "d")), FactorSpec("size", "continuous", ("s", "m", "l"),
                                                                        (1.0, 2.0))]


class Oracle(FactorClassifier):
    """Reads the true class of every factor from the image (pixel row 0 holds the classes): always right."""

    def __init__(self) -> None:
        super().__init__(SPECS, resolution=4, width=2)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {name: torch.nn.functional.one_hot(images[:, 0, 0, i].round().long(), spec.num_classes).float()
                for i, (name, spec) in enumerate(self.specs.items())}


def labelled_images(shape: Tensor, size_class: Tensor) -> Tensor:
    images = torch.zeros(len(shape), 3, 4, 4)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = shape.float(), size_class.float()
    return images


def raw_labels(shape: Tensor, size_class: Tensor) -> dict[str, Tensor]:
    """The dataset's raw labels: the size factor is continuous, binned at edges 1 and 2 (values 0.5, 1.5, 2.5)."""
    return {"shape": shape, "size": size_class.float() + 0.5}


def test_an_oracle_classifier_keeps_everything_and_nothing_varies():
    g = torch.Generator().manual_seed(0)
    shape, size = torch.randint(4, (40,), generator=g), torch.randint(3, (40,), generator=g)
    conditionings = labelled_images(shape, size)
    results = factor_agreement(Oracle(), conditionings.repeat_interleave(3, dim=0), raw_labels(shape, size), 3,
                               conditioning_images=conditionings)
    for name in ("shape", "size"):
        assert results[name]["kept"] == 1.0 and results[name]["varies"] == 0.0 and results[name]["ceiling"] == 1.0
    assert results["size"]["kind"] == "continuous" and results["size"]["num_classes"] == 3
    # The continuous truth is binned with the classifier's edges: size 1.5 is class 1, not "1.5".
    assert predict_factors(Oracle(), conditionings)["size"].tolist() == size.tolist()


def test_shuffled_samples_keep_only_chance():
    # 2000 conditionings with a known, skewed marginal; each one's 4 "samples" show other conditionings' factors.
    n, k = 2000, 4
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    shape, size = torch.multinomial(p, n, replacement=True, generator=g), torch.randint(3, (n,), generator=g)
    donors = torch.randint(n, (n * k,), generator=g)
    samples = labelled_images(shape[donors], size[donors])
    results = factor_agreement(Oracle(), samples, raw_labels(shape, size), k)
    for name in ("shape", "size"):
        row = results[name]
        truth = shape if name == "shape" else size
        per_conditioning = kept(predict_factors(Oracle(), samples)[name].view(n, k), truth)
        standard_error = float(per_conditioning.std()) / math.sqrt(n)
        assert abs(row["kept"] - row["chance"]) < 3 * standard_error, name
        low, high = row["kept_ci95"]
        assert low <= row["chance"] <= high, name
        assert row["kept_above_chance_ci95"][0] <= 0 <= row["kept_above_chance_ci95"][1]
        assert abs(row["varies"] - row["varies_chance"]) < 0.03, name
    # The known marginal: sum p^2 = 0.365 (what the empirical marginal of 2000 draws estimates).
    assert results["shape"]["chance"] == pytest.approx(float((p**2).sum()), abs=0.02)


def test_kept_equals_the_ceiling_when_the_samples_are_the_conditionings(tmp_path):
    # A weak real classifier (one epoch on 48 images): its accuracy is neither 0 nor 1, and kept must match it.
    run = FakeRun(tmp_path)
    classifier, _ = fc.factor_classifier_for(run, TINY)
    items = run.val_items(16)
    conditionings = (items["x0"] + 1) / 2
    results = factor_agreement(classifier, conditionings.repeat_interleave(3, dim=0), items["labels"], 3,
                               conditioning_images=conditionings)
    assert any(0 < row["ceiling"] < 1 for row in results.values())
    for row in results.values():
        assert row["kept"] == pytest.approx(row["ceiling"]) and row["varies"] == 0.0


def test_sample_counts_must_match():
    shape = torch.zeros(4, dtype=torch.long)
    with pytest.raises(RCDMError, match="3 per conditioning"):
        factor_agreement(Oracle(), labelled_images(shape, shape)[:10], raw_labels(shape, shape), 3)


# ------------------------------------------------------------------------------------- classifier cache
class FakeRun:
    """What metric=factors reads of a TrainedRun, on tiny 16 px shapes, with samples = the conditionings."""

    def __init__(self, tmp: Path, seed: int = 0, num_train: int = 48, num_val: int = 16, dataset: type = ShapesDataset):
        sets = {split: dataset(split=split, image_size=16, num_train=num_train, num_val=num_val, seed=seed)
                for split in ("train", "val")}
        self.ckpt = tmp / "toy" / "checkpoints" / "last.ckpt"
        self.datamodule = SimpleNamespace(dataset=sets.__getitem__, cache_dir=tmp / "cache")
        self.pipeline = SimpleNamespace(resolution=16, device=torch.device("cpu"))
        self.sampled: list[int] = []

    def labels(self, split: str) -> dict[str, Tensor]:
        dataset = self.datamodule.dataset(split)
        rows = [dataset.labels(i) for i in range(len(dataset))]
        return {name: torch.stack([row[name] for row in rows]) for name in rows[0]} if rows[0] else {}

    def images(self, split: str, indices) -> Tensor:
        dataset = self.datamodule.dataset(split)
        return torch.stack([(to_x0(dataset[int(i)]["image"], 16) + 1) / 2 for i in indices])

    def count(self, split: str, requested: int | None, what: str, default: int) -> int:
        return int(requested) if requested is not None else min(default, len(self.datamodule.dataset(split)))

    def val_items(self, n: int, what: str = "") -> dict:
        dataset = self.datamodule.dataset("val")
        labels = self.labels("val")
        return {"x0": self.images("val", range(n)) * 2 - 1, "h": torch.zeros(n, 2),
                "labels": {name: values[:n] for name, values in labels.items()}, "index": torch.arange(n),
                "image": torch.stack([dataset[i]["image"] for i in range(n)])}

    def sample(self, h: Tensor, k: int, settings) -> Tensor:
        self.sampled.append(k)
        return self.images("val", range(len(h))).repeat_interleave(k, dim=0)


class Unlabelled(RCDMDataset):
    def __init__(self, split: str, image_size: int, **_) -> None:
        self.size = image_size

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.rand(3, self.size, self.size)}

    def fingerprint(self) -> str:
        return "unlabelled"


def count_training(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = fc.train_factor_classifier

    def counted(images, *args, **kwargs):
        calls.append(len(images))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(fc, "train_factor_classifier", counted)
    return calls


def test_the_classifier_is_cached_and_keyed_by_the_data(tmp_path, monkeypatch):
    calls = count_training(monkeypatch)
    first, info = fc.factor_classifier_for(FakeRun(tmp_path), TINY)
    again, info_again = fc.factor_classifier_for(FakeRun(tmp_path), TINY)
    assert calls == [48] and not info["reused"] and info_again["reused"]       # the second call trained nothing
    assert info_again["val_accuracy"] == info["val_accuracy"] and info_again["cache"] == info["cache"]
    assert Path(info["cache"]).parent == tmp_path / "cache" / "factor_classifiers"
    images = FakeRun(tmp_path).images("val", range(8))
    assert all(torch.equal(a, b) for a, b in zip(predict_factors(first, images).values(),
                                                 predict_factors(again, images).values(), strict=True))
    # Other training data (another seed: another fingerprint), or other settings: another classifier.
    _, other = fc.factor_classifier_for(FakeRun(tmp_path, seed=1), TINY)
    _, wider = fc.factor_classifier_for(FakeRun(tmp_path), ClassifierSettings(width=6, epochs=1, batch_size=16))
    assert calls == [48, 48, 48] and len({info["cache"], other["cache"], wider["cache"]}) == 3
    assert not any(path.suffix == ".tmp" for path in (tmp_path / "cache" / "factor_classifiers").iterdir())


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    calls = count_training(monkeypatch)
    _, info = fc.factor_classifier_for(FakeRun(tmp_path), TINY)
    Path(info["cache"]).write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        _, rebuilt = fc.factor_classifier_for(FakeRun(tmp_path), TINY)
    assert calls == [48, 48] and not rebuilt["reused"]
    assert fc.factor_classifier_for(FakeRun(tmp_path), TINY)[1]["reused"]


def test_training_is_seeded(tmp_path):
    run = FakeRun(tmp_path)
    a, _ = fc.factor_classifier_for(run, TINY, cache_dir=tmp_path / "a")
    b, _ = fc.factor_classifier_for(run, TINY, cache_dir=tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_dataset_without_labels_gets_one_clear_error(tmp_path):
    with pytest.raises(RCDMError, match=r"metric=factors needs a dataset with factor labels, e\.g\. data=shapes"):
        factors.evaluate(FakeRun(tmp_path, dataset=Unlabelled), {"num_conditionings": None,
                                                                 "samples_per_conditioning": 2}, {}, tmp_path)


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_reports_every_factor_and_draws_the_chart(tmp_path):
    run = FakeRun(tmp_path)
    settings = {"num_conditionings": None, "samples_per_conditioning": 2,
                "classifier": {"width": 4, "epochs": 1, "batch_size": 16}}
    results = factors.evaluate(run, settings, {"sampler": "ddim", "steps": 2, "guidance": 1.0}, tmp_path / "out")
    assert run.sampled == [2] and results["num_conditionings"] == 16 and results["samples_per_conditioning"] == 2
    assert set(results["per_factor"]) == set(ShapesDataset.factor_kinds)
    assert set(results["classifier"]["val_accuracy"]) == set(ShapesDataset.factor_kinds)
    for row in results["per_factor"].values():
        # The fake run's "samples" are its conditionings: kept is the ceiling, nothing varies.
        assert row["kept"] == pytest.approx(row["ceiling"]) and row["varies"] == 0.0
        assert row["kept_ci95"][0] <= row["kept"] <= row["kept_ci95"][1]
        assert row["kept_above_chance"] == pytest.approx(row["kept"] - row["chance"])
        assert 0 < row["chance"] <= 1 and row["varies_chance"] == pytest.approx(1 - row["chance"])
    assert results["per_factor"]["x"]["num_classes"] == 4   # continuous factors: 4 quantile bins by default
    assert Path(results["factors_png"]).stat().st_size > 0
    json.dumps(results)   # what rcdm-eval writes


def test_the_yaml_settings_pass_the_rules_and_bad_ones_are_named():
    from omegaconf import OmegaConf

    from rcdm_lab.settings import check

    block = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "metric" / "factors.yaml")
    check(block.factors, factors.RULES)
    assert ClassifierSettings.from_mapping(OmegaConf.to_container(block.factors.classifier)) == ClassifierSettings()
    block.factors.classifier.epochs = 0
    with pytest.raises(RCDMError, match="classifier.epochs=0"):
        check(block.factors, factors.RULES)
    with pytest.raises(RCDMError, match="unknown factor classifier settings"):
        ClassifierSettings.from_mapping({"widht": 3})


# ------------------------------------------------------------------------------------------------ rcdm-eval
@pytest.mark.slow
def test_rcdm_eval_metric_factors_end_to_end(trained_checkpoint, tmp_path):
    from rcdm_testing import run_cli

    out = tmp_path / "eval"
    tiny = ["metric.factors.classifier.width=4", "metric.factors.classifier.epochs=1",
            "metric.factors.samples_per_conditioning=2"]
    result = run_cli("rcdm-eval", f"ckpt={trained_checkpoint}", f"hydra.run.dir={out}", "sampling.steps=2",
                     "sampling.progress=false", "logger=csv", "metric=factors", *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "factors.json").read_text())
    assert report["num_conditionings"] == 8 and set(report["per_factor"]) == set(ShapesDataset.factor_kinds)
    assert report["classifier"]["num_train"] == 32 and not report["classifier"]["reused"]
    assert (out / "factors.png").stat().st_size > 0
    assert "factors" in json.loads((out / "results.json").read_text())
    assert "per_factor/shape/kept=" in result.stdout
    bad = run_cli("rcdm-eval", f"ckpt={trained_checkpoint}", f"hydra.run.dir={out}", "metric=factors",
                  "metric.factors.classifier.lr=-1")
    assert bad.returncode == 2 and "metric.factors.classifier.lr=-1" in bad.stderr
