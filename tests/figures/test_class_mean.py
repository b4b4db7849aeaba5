from __future__ import annotations

import pytest
import torch

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures import class_mean


def test_class_means_average_exactly_the_rows_of_each_class():
    reps = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 6.0]])
    labels = torch.tensor([0, 0, 2, 0])
    means, counts = class_mean.class_means(reps, labels, [2, 0])
    torch.testing.assert_close(means, torch.tensor([[10.0, 0.0], [3.0, 4.0]]))
    assert counts.tolist() == [1, 3]
    with pytest.raises(RCDMError, match="no training items"):
        class_mean.class_means(reps, labels, [1])


def test_figure_rows_are_the_training_class_means(figure_ctx, tiny_run, settings_for):
    result = class_mean.make(figure_ctx, settings_for("class_mean", factor=None, classes=None, max_classes=2,
                                                      samples_per_class=2))
    assert result["factor"] == "shape" and len(result["classes"]) == 2
    reps, shapes = tiny_run.representations("train"), tiny_run.labels("train")["shape"]
    names = tiny_run.datamodule.dataset("train").class_names("shape")
    for row in result["classes"]:
        members = shapes == names.index(row["class"])
        assert row["count"] == int(members.sum())
        # Hand check: the mean of that class's rows, and the shown image is the member nearest to it.
        mean = reps[members].mean(0)
        distances = (reps[members] - mean).pow(2).sum(1)
        assert row["nearest_sq_l2"] == pytest.approx(float(distances.min()), rel=1e-4, abs=1e-6)
        assert bool(members[row["nearest_train_index"]])
        assert row["nearest_any_sq_l2"] <= row["nearest_sq_l2"] + 1e-6


def test_chosen_classes_by_name_or_index_and_unknown_ones_fail(tiny_run):
    labels = tiny_run.labels("train")["shape"]
    names = list(tiny_run.datamodule.dataset("train").class_names("shape"))
    present = sorted(set(labels.tolist()))
    picked = class_mean.chosen_classes(labels, names, "shape", [names[present[0]], present[-1]], 8)
    assert picked == [present[0], present[-1]]
    assert class_mean.chosen_classes(labels, names, "shape", None, 1) == [present[0]]
    with pytest.raises(RCDMError, match="unknown class"):
        class_mean.chosen_classes(labels, names, "shape", ["dragon"], 8)
    with pytest.raises(RCDMError, match="out of range"):
        class_mean.chosen_classes(labels, names, "shape", [len(names)], 8)


def test_unknown_factor_or_class_in_the_figure_is_an_error(figure_ctx, settings_for):
    with pytest.raises(RCDMError, match="unknown factor"):
        class_mean.make(figure_ctx, settings_for("class_mean", factor="species", classes=None, max_classes=2,
                                                 samples_per_class=1))
    with pytest.raises(RCDMError, match="unknown class"):
        class_mean.make(figure_ctx, settings_for("class_mean", factor=None, classes=["dragon"], max_classes=2,
                                                 samples_per_class=1))
