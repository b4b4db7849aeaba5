"""The folder's file index: reused while the folder is unchanged, refreshed when it is not, and fed by rcdm-scan."""

import io
import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from rcdm_lab.cli.scan import main as scan_main
from rcdm_lab.data.file_index import index_path, list_folder, load_index, save_index
from rcdm_lab.data.folder import IMAGE_EXTENSIONS, FolderDataset
from rcdm_lab.errors import UnreadableImageError

OLD_MTIME_NS = 1_600_000_000_123_456_789


def _settle(root):
    """Date every directory 10 s back: a folder that has sat on disk (see RACY_MTIME_NS)."""
    for folder, _, _ in os.walk(root):
        stat = os.stat(folder)
        os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10 * 10**9))


def _write_classes(root, per_class=4):
    for name in ("cat", "dog"):
        (root / name / "deeper").mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (4, 4), 40 * i).save(root / name / f"{i}.png")
        Image.new("L", (4, 4), 7).save(root / name / "deeper" / "d.png")
    _settle(root)


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:300]


def _dataset(root, index_dir, split="all", **kwargs):
    return FolderDataset(root, split, image_size=4, val_fraction=0.3, index_dir=str(index_dir), **kwargs)


def _no_listing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the folder was listed again")

    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(os, "walk", refuse)


def test_an_unchanged_folder_is_not_listed_again_and_keeps_its_fingerprint(tmp_path, monkeypatch):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    first = _dataset(root, index_dir)
    unindexed = FolderDataset(root, "all", image_size=4, val_fraction=0.3)  # stats every file afresh
    _no_listing(monkeypatch)
    second = _dataset(root, index_dir)
    assert second.relative_paths == first.relative_paths == unindexed.relative_paths
    assert second.fingerprint() == unindexed.fingerprint()


def _add(root):
    Image.new("L", (4, 4), 1).save(root / "dog" / "deeper" / "new.png")


def _remove(root):
    (root / "cat" / "deeper" / "d.png").unlink()


def _rename(root):
    (root / "cat" / "deeper" / "d.png").rename(root / "cat" / "deeper" / "e.png")


def _new_class(root):
    (root / "bird").mkdir()
    Image.new("L", (4, 4), 1).save(root / "bird" / "b.png")


@pytest.mark.parametrize(("edit", "added", "gone"), [
    (_add, {"dog/deeper/new.png"}, set()),
    (_remove, set(), {"cat/deeper/d.png"}),
    (_rename, {"cat/deeper/e.png"}, {"cat/deeper/d.png"}),
    (_new_class, {"bird/b.png"}, set()),
])
def test_adding_removing_or_renaming_a_file_refreshes_the_index(tmp_path, edit, added, gone):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    before = _dataset(root, index_dir)
    edit(root)
    after = _dataset(root, index_dir)
    assert set(after.relative_paths) - set(before.relative_paths) == added
    assert set(before.relative_paths) - set(after.relative_paths) == gone
    assert after.fingerprint() != before.fingerprint()


def test_a_folder_changed_within_its_mtime_tick_of_the_listing_is_listed_again(tmp_path):
    # Not settled: the index is written while the directory's mtime is recent. A file added in the same mtime tick
    # (simulated by restoring the old mtime, as a 1 s-granularity filesystem would show it) must still be seen.
    root, index_dir = tmp_path / "images", tmp_path / "index"
    root.mkdir()
    Image.new("L", (4, 4)).save(root / "a.png")
    _dataset(root, index_dir)
    stat = os.stat(root)
    Image.new("L", (4, 4)).save(root / "b.png")
    os.utime(root, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _dataset(root, index_dir).relative_paths == ["a.png", "b.png"]


def test_a_rewrite_in_place_is_not_seen_until_rcdm_scan_or_deleting_the_index(tmp_path, capsys):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    reference = _dataset(root, index_dir).fingerprint()
    Image.new("L", (9, 9), 3).save(root / "cat" / "0.png")  # same name, new pixels: no directory changes
    assert _dataset(root, index_dir).fingerprint() == reference  # the documented blind spot
    assert scan_main([str(root), "--workers", "2", "--index-dir", str(index_dir)]) == 0
    refreshed = _dataset(root, index_dir).fingerprint()
    assert refreshed != reference
    Image.new("L", (5, 5), 3).save(root / "cat" / "0.png")
    index_path(index_dir, root).unlink()
    assert _dataset(root, index_dir).fingerprint() not in (reference, refreshed)


def test_the_fingerprint_is_the_one_of_the_folder_before_the_index(tmp_path):
    # Values computed with the version that stat-ed (and decoded) every file: caches keyed on them stay valid.
    for name in ("cat/x.bmp", "cat/deeper/w.bmp", "dog/y.bmp", "z.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / name)
        os.utime(tmp_path / name, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    _settle(tmp_path)
    index_dir = str(tmp_path.parent / f"{tmp_path.name}-index")
    for split, expected in (("all", "cca2b8c26ebc8c22"), ("train", "4276c9317dd5c9fb")):
        FolderDataset(tmp_path, split, image_size=8, val_fraction=0.3, index_dir=index_dir)  # writes the index
        reused = FolderDataset(tmp_path, split, image_size=8, val_fraction=0.3, index_dir=index_dir)
        assert reused.fingerprint() == expected


def test_splits_and_classes_are_those_of_a_fresh_listing(tmp_path, monkeypatch):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root, per_class=12)
    fresh = {split: FolderDataset(root, split, image_size=4, val_fraction=0.3) for split in ("train", "val")}
    _dataset(root, index_dir, "train")
    _no_listing(monkeypatch)
    for split, expected in fresh.items():
        reused = _dataset(root, index_dir, split)
        assert reused.relative_paths == expected.relative_paths and reused.targets == expected.targets
        assert reused.classes == expected.classes == ["cat", "dog"]
    assert 0 < len(fresh["val"]) < len(fresh["train"])


def test_a_corrupt_file_is_found_when_read_naming_its_relative_path(tmp_path):
    root = tmp_path / "images"
    _write_classes(root)
    (root / "dog" / "broken.png").write_text("not a png")
    dataset = _dataset(root, tmp_path / "index")
    position = dataset.relative_paths.index("dog/broken.png")
    with pytest.raises(UnreadableImageError) as caught:
        dataset[position]
    assert caught.value.relative_path == "dog/broken.png" and caught.value.root == str(root)
    assert dataset[position - 1]["image"].shape == (3, 4, 4)


def test_rcdm_scan_finds_corrupt_files_and_construction_then_excludes_them(tmp_path, capsys):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    (root / "cat" / "deeper" / "cut.jpg").write_bytes(_truncated_jpeg())
    (root / "dog" / "text.png").write_text("hello")
    assert scan_main([str(root), "--workers", "2", "--index-dir", str(index_dir)]) == 1
    out = capsys.readouterr().out
    assert "scanned 12 images" in out and "2 unreadable" in out
    assert "cat/deeper/cut.jpg: " in out and "dog/text.png: " in out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset(root, index_dir)
    assert len(dataset) == 10 and {"cat/deeper/cut.jpg", "dog/text.png"}.isdisjoint(dataset.relative_paths)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("excluded 2 unreadable image file(s)") and "rcdm-scan found" in message
    for index in range(len(dataset)):
        dataset[index]  # every remaining file decodes


def test_scan_findings_survive_adding_an_unrelated_file(tmp_path, capsys):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    (root / "dog" / "text.png").write_text("hello")
    scan_main([str(root), "--workers", "1", "--index-dir", str(index_dir)])
    _add(root)  # the next construction lists the folder again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset(root, index_dir)
    assert "dog/deeper/new.png" in dataset.relative_paths and "dog/text.png" not in dataset.relative_paths
    assert any("excluded 1 unreadable" in str(w.message) for w in caught)


def test_a_clean_folder_scans_with_status_0_and_a_missing_one_is_a_user_error(tmp_path, capsys):
    _write_classes(tmp_path / "images")
    assert scan_main([str(tmp_path / "images"), "--index-dir", str(tmp_path / "index")]) == 0
    assert "0 unreadable" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        scan_main([str(tmp_path / "missing"), "--index-dir", str(tmp_path / "index")])
    assert exited.value.code == 2
    assert "missing does not exist: check the path" in capsys.readouterr().err


def test_the_index_is_keyed_by_the_resolved_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "images")
    assert index_path(tmp_path / "index", tmp_path / "link") == index_path(tmp_path / "index", tmp_path / "images")
    assert index_path(tmp_path / "index", tmp_path / "images") != index_path(tmp_path / "index", tmp_path)


def test_a_damaged_or_unwritable_index_never_stops_construction(tmp_path):
    root, index_dir = tmp_path / "images", tmp_path / "index"
    _write_classes(root)
    _dataset(root, index_dir)
    stored = index_path(index_dir, root)
    stored.write_bytes(stored.read_bytes()[:100])
    assert len(_dataset(root, index_dir)) == 10
    assert load_index(stored, root, IMAGE_EXTENSIONS) is not None  # rewritten whole
    (tmp_path / "a-file").write_text("")
    with pytest.warns(UserWarning, match="could not write the folder index"):
        assert len(_dataset(root, tmp_path / "a-file" / "index")) == 10


def test_ranks_writing_the_index_at_once_never_leave_a_partial_file(tmp_path):
    root = tmp_path / "images"
    _write_classes(root, per_class=50)
    index = list_folder(root, IMAGE_EXTENSIONS)
    target = tmp_path / "index" / "shared.npz"
    save_index(index, target)
    errors, loaded = [], []

    def write():
        try:
            for _ in range(10):
                save_index(index, target)
        except Exception as error:  # noqa: BLE001 (reported by the assertion below)
            errors.append(error)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for thread in writers:
        thread.start()
    while any(thread.is_alive() for thread in writers):
        loaded.append(load_index(target, root, IMAGE_EXTENSIONS))
    for thread in writers:
        thread.join()
    assert not errors and loaded and all(i is not None and i.relative_paths == index.relative_paths for i in loaded)
    assert sorted(p.name for p in target.parent.iterdir()) == ["shared.npz"]  # no temporary file left behind
