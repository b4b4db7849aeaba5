import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_lab.data.folder import FolderDataset, list_images, load_image
from rcdm_lab.errors import RCDMError, UnreadableImageError

SIZE = 16


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_mixed_folder(root):
    """Six decodable images in awkward formats and two broken files."""
    root.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(0, 255, 40 * 30 * 3).reshape(30, 40, 3).astype(np.uint8)
    Image.fromarray(gradient).save(root / "good.jpg", quality=95)
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red
    Image.fromarray(np.full((20, 24), 32896, dtype=np.uint16)).save(root / "grey16.png")  # 32896 / 257 = 128
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)  # index 0 blue, index 1 transparent
    palette.paste(1, (0, 0, 10, 20))
    palette.save(root / "palette.png", transparency=1)
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 1], rgba[:, 10:, 3] = 255, 255  # green, left half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    Image.new("L", (20, 20), 60).save(root / "grey.png")
    (root / "corrupt.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    whole = _jpeg_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])


def test_awkward_formats_load_and_broken_files_raise_only_when_read(tmp_path):
    _write_mixed_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # construction decodes nothing, so it has nothing to warn about
        dataset = FolderDataset(root=tmp_path, image_size=SIZE, val_fraction=0.0)
    assert dataset.relative_paths == ["cmyk.jpg", "corrupt.png", "good.jpg", "grey.png", "grey16.png", "palette.png",
                                      "rgba.png", "truncated.jpg"]
    for index, name in enumerate(dataset.relative_paths):
        if name in ("corrupt.png", "truncated.jpg"):
            with pytest.raises(UnreadableImageError, match=f"{name}.*rcdm-scan") as caught:
                dataset[index]
            assert caught.value.relative_path == name and caught.value.root == str(tmp_path)
            continue
        image = dataset[index]["image"]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert int(dataset[index]["labels"]["class"]) == 0


def test_sixteen_bit_mid_grey_stays_mid_grey(tmp_path):
    _write_mixed_folder(tmp_path)
    image = load_image(tmp_path / "grey16.png")
    assert image.shape == (3, 20, 24)
    assert torch.allclose(image, torch.full_like(image, 128 / 255))


def test_transparency_is_composited_on_white_and_cmyk_becomes_rgb(tmp_path):
    _write_mixed_folder(tmp_path)
    palette = load_image(tmp_path / "palette.png")
    assert torch.equal(palette[:, 5, 2], torch.ones(3))  # transparent index
    assert torch.equal(palette[:, 5, 15], torch.tensor([0.0, 0.0, 1.0]))
    rgba = load_image(tmp_path / "rgba.png")
    assert torch.equal(rgba[:, 5, 2], torch.ones(3))
    assert torch.equal(rgba[:, 5, 15], torch.tensor([0.0, 1.0, 0.0]))
    red = load_image(tmp_path / "cmyk.jpg")[:, 10, 10]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    grey = load_image(tmp_path / "grey.png")
    assert torch.allclose(grey, torch.full_like(grey, 60 / 255))


def test_non_square_images_are_resized_then_centre_cropped(tmp_path):
    thirds = np.zeros((20, 60, 3), dtype=np.uint8)
    thirds[:, :20, 0], thirds[:, 20:40, 1], thirds[:, 40:, 2] = 255, 255, 255  # red | green | blue
    Image.fromarray(thirds).save(tmp_path / "wide.png")
    image = FolderDataset(tmp_path, image_size=SIZE, val_fraction=0.0)[0]["image"]
    # Shorter side 20 -> 16 makes the width 48; its central 16 columns are exactly the green third.
    assert float(image[1].min()) > 0.9
    assert float(image[1, :, 2:-2].min()) > 0.98 and float(image[[0, 2], :, 2:-2].max()) < 0.02


def test_unreadable_file_given_directly_raises_naming_it(tmp_path):
    _write_mixed_folder(tmp_path)
    with pytest.raises(RCDMError, match="corrupt.png"):
        load_image(tmp_path / "corrupt.png")


def test_empty_missing_or_file_roots_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(RCDMError, match=r"no images found in .*empty.*\.jpg"):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(RCDMError, match="does not exist"):
        FolderDataset(tmp_path / "missing")
    (tmp_path / "image.png").write_bytes(b"not a png")
    with pytest.raises(RCDMError, match="is a file: give the folder"):
        FolderDataset(tmp_path / "image.png")
    (tmp_path / "one").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "one" / "only.png")
    with pytest.raises(RCDMError, match="no readable val images"):
        FolderDataset(tmp_path / "one", "val", val_fraction=0.0)


def test_class_subfolders_give_class_labels(tmp_path):
    for name, value in (("cat", 10), ("dog", 200)):
        (tmp_path / name / "deeper").mkdir(parents=True)
        Image.new("L", (8, 8), value).save(tmp_path / name / "deeper" / f"{name}.png")
    dataset = FolderDataset(tmp_path, image_size=8, val_fraction=0.0)
    assert dataset.classes == ["cat", "dog"]
    labels = {p: int(dataset[i]["labels"]["class"]) for i, p in enumerate(dataset.relative_paths)}
    assert labels == {"cat/deeper/cat.png": 0, "dog/deeper/dog.png": 1}


def test_split_is_disjoint_stable_and_complete(tmp_path):
    for i in range(40):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:02d}.png")
    train = FolderDataset(tmp_path, "train", image_size=4, val_fraction=0.3)
    val = FolderDataset(tmp_path, "val", image_size=4, val_fraction=0.3)
    everything = FolderDataset(tmp_path, "all", image_size=4, val_fraction=0.3)
    assert set(train.relative_paths).isdisjoint(val.relative_paths)
    assert sorted(train.relative_paths + val.relative_paths) == everything.relative_paths
    assert 0 < len(val) < len(train)
    for i in range(40, 60):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i:02d}.png")
    grown_val = FolderDataset(tmp_path, "val", image_size=4, val_fraction=0.3)
    assert set(val.relative_paths) <= set(grown_val.relative_paths)
    assert len(FolderDataset(tmp_path, "train", image_size=4, val_fraction=0.0)) == 60


def test_fingerprint_changes_with_files_split_and_size(tmp_path):
    for i in range(3):
        Image.new("L", (4, 4), i).save(tmp_path / f"{i}.png")
    reference = FolderDataset(tmp_path, "all", image_size=4).fingerprint()
    assert FolderDataset(tmp_path, "all", image_size=4).fingerprint() == reference
    assert FolderDataset(tmp_path, "all", image_size=8).fingerprint() != reference
    assert FolderDataset(tmp_path, "train", image_size=4, val_fraction=0.0).fingerprint() != reference
    stat = (tmp_path / "1.png").stat()
    os.utime(tmp_path / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert FolderDataset(tmp_path, "all", image_size=4).fingerprint() != reference


def test_list_images_accepts_a_file_or_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.jpg", ".hidden.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("hi")
    assert list_images(tmp_path) == [tmp_path / "b.png", tmp_path / "sub" / "a.jpg"]
    assert list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(RCDMError, match="not an image"):
        list_images(tmp_path / "readme.txt")
    with pytest.raises(RCDMError, match="does not exist"):
        list_images(tmp_path / "nothing.png")


def test_bad_split_or_fraction_raise(tmp_path):
    with pytest.raises(RCDMError, match="split must be one of"):
        FolderDataset(tmp_path, split="test")
    with pytest.raises(RCDMError, match="val_fraction"):
        FolderDataset(tmp_path, val_fraction=1.0)
