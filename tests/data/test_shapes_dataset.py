import dataclasses

import numpy as np
import pytest
import torch

from rcdm_lab.data.shapes import (
    COLOUR_RGB,
    SCALE_RANGE,
    SHAPE_CLASSES,
    SYMMETRY_PERIOD,
    ShapeFactors,
    ShapesDataset,
    _object_coverage,
    render,
    rotation_label,
)
from rcdm_lab.errors import RCDMError


def test_same_seed_and_index_give_identical_pixels_across_instances():
    first, second = ShapesDataset(image_size=24, num_train=20), ShapesDataset(image_size=24, num_train=20)
    for index in (0, 7, 19):
        assert torch.equal(first[index]["image"], second[index]["image"])
        assert first[index]["labels"] == second[index]["labels"]


def test_items_differ_by_index_seed_and_split():
    train = ShapesDataset(image_size=24, num_train=5, num_val=5)
    reseeded = ShapesDataset(image_size=24, num_train=5, num_val=5, seed=1)
    val = ShapesDataset(split="val", image_size=24, num_train=5, num_val=5)
    assert not torch.equal(train[0]["image"], train[1]["image"])
    for index in range(5):
        assert not torch.equal(train[index]["image"], val[index]["image"])
        assert not torch.equal(train[index]["image"], reseeded[index]["image"])
    assert train.fingerprint() != val.fingerprint()


def test_images_are_rgb_in_unit_range():
    item = ShapesDataset(image_size=20, num_train=3)[2]
    assert item["image"].shape == (3, 20, 20)
    assert item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0


def test_labels_have_declared_kinds_and_ranges_and_all_shapes_occur():
    dataset = ShapesDataset(image_size=16, num_train=200)
    assert len(SHAPE_CLASSES) >= 6
    assert set(dataset.factor_names) == set(dataset.factor_kinds)
    seen_shapes = set()
    for index in range(len(dataset)):
        labels = dataset.labels(index)
        assert set(labels) == set(dataset.factor_names)
        for name, value in labels.items():
            assert value.shape == ()
            if dataset.factor_kinds[name] == "class":
                assert value.dtype == torch.long
                assert 0 <= int(value) < dataset.num_classes(name)
            else:
                assert value.dtype == torch.float32
        scale = float(labels["scale"])
        assert SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]
        for axis in ("x", "y"):
            assert 0.0 < float(labels[axis]) < 1.0
        period = SYMMETRY_PERIOD[SHAPE_CLASSES[int(labels["shape"])]]
        assert 0.0 <= float(labels["rotation"]) < (period or 1e-9)
        assert int(labels["object_colour"]) != int(labels["background_colour"])
        seen_shapes.add(int(labels["shape"]))
    assert seen_shapes == set(range(len(SHAPE_CLASSES)))


def test_labels_without_rendering_match_the_item_labels():
    dataset = ShapesDataset(image_size=16, num_train=4)
    assert dataset.labels(3) == dataset[3]["labels"]


def test_edges_are_antialiased():
    dataset = ShapesDataset(image_size=32, num_train=100)
    plain = dataset.class_names("texture").index("plain")
    index = next(i for i in range(len(dataset)) if int(dataset.labels(i)["texture"]) == plain)
    labels, pixels = dataset.labels(index), dataset[index]["image"].flatten(1).T
    background = torch.from_numpy(COLOUR_RGB[int(labels["background_colour"])])
    foreground = torch.from_numpy(COLOUR_RGB[int(labels["object_colour"])])
    near_background = (pixels - background).abs().amax(1) < 1e-3
    near_foreground = (pixels - foreground).abs().amax(1) < 1e-3
    assert near_background.any() and near_foreground.any()
    # Edge pixels mix the two colours instead of snapping to one of them.
    assert int((~near_background & ~near_foreground).sum()) >= 8


def test_bad_arguments_raise_rcdm_error():
    with pytest.raises(RCDMError, match="split must be one of"):
        ShapesDataset(split="test")
    with pytest.raises(RCDMError, match="num_val"):
        ShapesDataset(split="val", num_val=0)


def test_fingerprint_tracks_what_determines_pixels():
    reference = ShapesDataset(image_size=16).fingerprint()
    assert ShapesDataset(image_size=16).fingerprint() == reference
    assert ShapesDataset(image_size=32).fingerprint() != reference
    assert ShapesDataset(image_size=16, seed=3).fingerprint() != reference


def _mask_centroid(coverage: np.ndarray) -> tuple[float, float]:
    ys, xs = (np.indices(coverage.shape) + 0.5) / coverage.shape[0]
    return float((xs * coverage).sum() / coverage.sum()), float((ys * coverage).sum() / coverage.sum())


def test_x_and_y_labels_are_the_centroid_of_the_rendered_shape():
    dataset = ShapesDataset(image_size=128, num_train=120)
    seen = set()
    for index in range(len(dataset)):
        factors, labels = dataset.factors(index), dataset.labels(index)
        x, y = _mask_centroid(_object_coverage(factors, 128))
        # Half a pixel at 128 px: the crescent's disc centre is up to 0.14 image widths from what is drawn.
        assert float(labels["x"]) == pytest.approx(x, abs=0.004), SHAPE_CLASSES[factors.shape]
        assert float(labels["y"]) == pytest.approx(y, abs=0.004), SHAPE_CLASSES[factors.shape]
        seen.add(factors.shape)
    assert seen == set(range(len(SHAPE_CLASSES)))


@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_rotation_label_is_defined_modulo_the_shapes_symmetry(shape):
    base = ShapeFactors(shape=SHAPE_CLASSES.index(shape), object_colour=0, background_colour=3, texture=0,
                        scale=0.6, x=0.5, y=0.5, rotation=17.0)
    period = SYMMETRY_PERIOD[shape]
    turned = dataclasses.replace(base, rotation=17.0 + (period or 45.0))
    # The same picture gets the same label ...
    assert np.abs(render(base, 64) - render(turned, 64)).mean() < 1e-3
    assert rotation_label(base) == pytest.approx(rotation_label(turned), abs=1e-9)
    # ... and a rotation that changes the picture (not a symmetry) changes the label.
    if period is None:
        assert rotation_label(base) == 0.0
    else:
        assert rotation_label(base) == pytest.approx(17.0)
        quarter = dataclasses.replace(base, rotation=17.0 + period / 4)
        assert np.abs(render(base, 64) - render(quarter, 64)).mean() > 1e-3
        assert rotation_label(quarter) == pytest.approx(17.0 + period / 4)


def test_object_area_follows_the_scale_label():
    # A bug in how scale sizes the object (radius vs diameter, a forgotten factor) breaks area ~ scale^2.
    dataset = ShapesDataset(image_size=96, num_train=300)
    square = SHAPE_CLASSES.index("square")
    ratios = [float(_object_coverage(dataset.factors(i), 96).sum()) / (96 * float(dataset.labels(i)["scale"])) ** 2
              for i in range(len(dataset)) if int(dataset.labels(i)["shape"]) == square]
    assert len(ratios) >= 10
    # A square inscribed in a circle of diameter scale * S covers half of (scale * S)^2.
    assert np.allclose(ratios, 0.5, atol=0.01)
