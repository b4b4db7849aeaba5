import functools
import warnings

import lightning as L
import pytest
import torch

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.data.cache import RepresentationCache
from rcdm_lab.data.datamodule import RCDMDataModule
from rcdm_lab.data.shapes import ShapesDataset
from rcdm_lab.errors import RCDMError, UnreadableImageError
from rcdm_lab.resize import to_x0

RESOLUTION, BATCH, NUM_TRAIN, NUM_VAL = 16, 8, 24, 8
shapes = functools.partial(ShapesDataset, num_train=NUM_TRAIN, num_val=NUM_VAL)


def _datamodule(tmp_path, encoder, cache=True, batch_size=BATCH, **kwargs) -> RCDMDataModule:
    datamodule = RCDMDataModule(shapes, resolution=RESOLUTION, batch_size=batch_size, cache=cache,
                                cache_dir=str(tmp_path / "cache"), cache_batch_size=8, **kwargs)
    datamodule.attach_encoder(encoder)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _epoch(loader) -> list[dict]:
    return list(loader)


def test_train_batches_have_the_documented_shapes_and_ranges(tmp_path, make_encoder):
    datamodule = _datamodule(tmp_path, make_encoder())
    assert datamodule.source_size == 24  # max(resolution 16, encoder input 24)
    batches = _epoch(datamodule.train_dataloader())
    assert len(batches) == NUM_TRAIN // BATCH
    batch = batches[0]
    assert batch["x0"].shape == (BATCH, 3, RESOLUTION, RESOLUTION) and batch["x0"].dtype == torch.float32
    assert float(batch["x0"].min()) >= -1.0 and float(batch["x0"].max()) <= 1.0
    assert float(batch["x0"].min()) < -0.5 < 0.5 < float(batch["x0"].max())
    assert batch["h"].shape == (BATCH, 6) and batch["h"].dtype == torch.float32
    assert batch["index"].shape == (BATCH,) and set(batch["labels"]) == set(ShapesDataset.factor_names)
    assert "image" not in batch
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(NUM_TRAIN))
    assert datamodule.cache_key("train") != datamodule.cache_key("val")


def test_only_the_training_split_caches_flipped_representations(tmp_path, make_encoder):
    datamodule = _datamodule(tmp_path, make_encoder())
    caches = {split: RepresentationCache.open(datamodule.cache_dir, datamodule.cache_key(split)) for split in
              ("train", "val")}
    assert caches["train"].has_flips and not caches["val"].has_flips
    assert caches["val"].reps.shape == (NUM_VAL, 1, 6)
    unflipped = _datamodule(tmp_path / "noflip", make_encoder(), flip=False)
    assert not RepresentationCache.open(unflipped.cache_dir, unflipped.cache_key("train")).has_flips


def test_flip_moves_x0_and_h_together(tmp_path, make_encoder):
    torch.manual_seed(0)
    datamodule = _datamodule(tmp_path, make_encoder())
    cache = RepresentationCache.open(tmp_path / "cache", datamodule.cache_key("train"))
    flips = []
    for batch in _epoch(datamodule.train_dataloader()):
        for row, (index, flipped) in enumerate(zip(batch["index"].tolist(), batch["flipped"].tolist(), strict=True)):
            flips.append(flipped)
            assert torch.equal(batch["h"][row], cache.get(index, flipped))
            unflipped_x0 = cache.get_image(index, False).float() / 127.5 - 1
            expected_x0 = unflipped_x0.flip(-1) if flipped else unflipped_x0
            assert torch.allclose(batch["x0"][row], expected_x0, atol=1e-6)
    assert any(flips) and not all(flips)
    for batch in _epoch(datamodule.val_dataloader()):
        assert not batch["flipped"].any()


def test_without_cache_h_is_computed_after_transfer_and_matches_the_cache(tmp_path, make_encoder):
    cached = _datamodule(tmp_path, make_encoder(), flip=False)
    live = _datamodule(tmp_path / "live", make_encoder(), cache=False, flip=False)
    assert not (tmp_path / "live" / "cache").exists()
    cached_batches = {int(b["index"][0]): b for b in _epoch(cached.val_dataloader())}
    for batch in _epoch(live.val_dataloader()):
        assert "image" in batch and "h" not in batch
        assert batch["image"].shape == (len(batch["index"]), 3, 24, 24)
        batch = live.on_after_batch_transfer(batch, 0)
        assert "image" not in batch
        reference = cached_batches[int(batch["index"][0])]
        assert torch.equal(batch["index"], reference["index"])
        assert torch.allclose(batch["h"], reference["h"], atol=1e-5)
        assert torch.equal(batch["x0"], reference["x0"])


def test_live_path_flips_image_and_x0_together(tmp_path, make_encoder):
    torch.manual_seed(0)
    live = _datamodule(tmp_path, make_encoder(), cache=False)
    source = live.dataset("train")
    for batch in _epoch(live.train_dataloader()):
        for row, (index, flipped) in enumerate(zip(batch["index"].tolist(), batch["flipped"].tolist(), strict=True)):
            image = source[index]["image"]
            x0 = to_x0(image, RESOLUTION)
            assert torch.equal(batch["image"][row], image.flip(-1) if flipped else image)
            assert torch.equal(batch["x0"][row], x0.flip(-1) if flipped else x0)


def test_val_items_are_deterministic_and_agree_across_paths(tmp_path, make_encoder):
    cached = _datamodule(tmp_path, make_encoder())
    first, second = cached.val_items(5), cached.val_items(5)
    assert set(first) == {"x0", "h", "image", "labels", "index"}
    assert first["image"].shape == (5, 3, 24, 24) and first["x0"].shape == (5, 3, RESOLUTION, RESOLUTION)
    for key in ("x0", "h", "image", "index"):
        assert torch.equal(first[key], second[key])
    live = _datamodule(tmp_path / "live", make_encoder(), cache=False).val_items(5)
    assert torch.equal(live["x0"], first["x0"]) and torch.equal(live["image"], first["image"])
    assert torch.allclose(live["h"], first["h"], atol=1e-5)
    assert cached.val_items(100)["h"].shape[0] == NUM_VAL


def test_representation_stats_agree_with_and_without_cache(tmp_path, make_encoder):
    cached_mean, cached_std = _datamodule(tmp_path, make_encoder()).representation_stats()
    live_mean, live_std = _datamodule(tmp_path / "live", make_encoder(), cache=False).representation_stats()
    assert cached_mean.shape == (6,) and torch.all(cached_std > 0)
    assert torch.allclose(cached_mean, live_mean, atol=1e-5) and torch.allclose(cached_std, live_std, atol=1e-5)


class _EmptyDataset(RCDMDataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict:
        raise IndexError(index)

    def fingerprint(self) -> str:
        return "empty"


def test_missing_encoder_too_big_batch_and_empty_dataset_are_explained(tmp_path, make_encoder):
    with pytest.raises(RuntimeError, match="attach_encoder"):
        RCDMDataModule(shapes, cache_dir=str(tmp_path)).prepare_data()
    datamodule = _datamodule(tmp_path, make_encoder(), batch_size=NUM_TRAIN + 1)
    with pytest.raises(RCDMError, match="lower data.batch_size"):
        datamodule.train_dataloader()
    empty = RCDMDataModule(lambda split, image_size: _EmptyDataset(), cache_dir=str(tmp_path), encoder=make_encoder())
    with pytest.raises(RCDMError, match="dataset is empty"):
        empty.prepare_data()
    with pytest.raises(RuntimeError, match="setup"):
        RCDMDataModule(shapes, encoder=make_encoder()).train_dataloader()


class _ExpectsRepresentations(L.LightningModule):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim, 1)
        self.seen = 0

    def training_step(self, batch, batch_idx):
        assert "image" not in batch and batch["h"].shape == (BATCH, self.layer.in_features)
        self.seen += 1
        return self.layer(batch["h"]).mean() + 0 * batch["x0"].mean()

    def validation_step(self, batch, batch_idx):
        assert "image" not in batch and batch["h"].shape[1] == self.layer.in_features

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_lightning_fit_sees_h_in_both_modes(tmp_path, make_encoder, cache):
    encoder = make_encoder()
    datamodule = RCDMDataModule(shapes, resolution=RESOLUTION, batch_size=BATCH, cache=cache,
                                cache_dir=str(tmp_path / "cache"), encoder=encoder)
    model = _ExpectsRepresentations(encoder.dim)
    # The sanity check runs one validation batch through the same hooks before training starts.
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, num_sanity_val_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert model.seen == 2


UNREADABLE_TRAIN = {2, 11, 12}


class _PartlyUnreadableShapes(ShapesDataset):
    """Training items 2, 11 and 12 raise as a truncated file does (lazily, when decoded)."""

    def __getitem__(self, index: int) -> dict:
        if self.split == "train" and index in UNREADABLE_TRAIN:
            raise UnreadableImageError(f"train/img_{index}.jpg", "truncated")
        return super().__getitem__(index)


partly_unreadable = functools.partial(_PartlyUnreadableShapes, num_train=NUM_TRAIN, num_val=NUM_VAL)


def test_cached_batches_never_contain_an_unreadable_image(tmp_path, make_encoder):
    datamodule = RCDMDataModule(partly_unreadable, resolution=RESOLUTION, batch_size=7,
                                cache_dir=str(tmp_path / "cache"), cache_batch_size=8)
    datamodule.attach_encoder(make_encoder())
    with pytest.warns(UserWarning, match="3 unreadable image"):
        datamodule.prepare_data()
    datamodule.setup("fit")
    seen = torch.cat([batch["index"] for batch in _epoch(datamodule.train_dataloader())]).tolist()
    assert len(seen) == 21 and not set(seen) & UNREADABLE_TRAIN   # 24 - 3 readable items, 3 batches of 7
    assert "unreadable" not in next(iter(datamodule.train_dataloader()))
    cache = RepresentationCache.open(datamodule.cache_dir, datamodule.cache_key("train"))
    mean, _ = datamodule.representation_stats()
    readable = sorted(set(range(NUM_TRAIN)) - UNREADABLE_TRAIN)
    assert torch.allclose(mean, torch.stack([cache.get(i, False) for i in readable]).mean(0), atol=1e-6)


def test_live_batches_replace_unreadable_images_and_warn_once_per_report(tmp_path, make_encoder):
    live = RCDMDataModule(partly_unreadable, resolution=RESOLUTION, batch_size=BATCH, cache=False,
                          cache_dir=str(tmp_path / "cache"), cache_batch_size=8)
    live.attach_encoder(make_encoder())
    live.prepare_data()
    live.setup("fit")
    batches = _epoch(live.train_dataloader())
    assert all(len(batch["index"]) == BATCH for batch in batches)     # replaced, not dropped: full batches
    assert not set(torch.cat([b["index"] for b in batches]).tolist()) & UNREADABLE_TRAIN
    for batch in batches:
        assert "unreadable" not in live.on_after_batch_transfer(batch, 0)
    with pytest.warns(UserWarning) as caught:
        live.report_unreadable("in training epoch 0")
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "3 unreadable image(s) skipped in training epoch 0: train/img_11.jpg (truncated), train/img_12.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        live.report_unreadable("in training epoch 1")   # nothing new since the last report
    mean, std = live.representation_stats()              # live statistics skip them too
    assert torch.isfinite(mean).all() and torch.all(std > 0)


def test_cache_dtype_is_checked_and_float16_is_another_cache(tmp_path, make_encoder):
    with pytest.raises(RCDMError, match="data.cache_dtype='half'"):
        RCDMDataModule(shapes, cache_dtype="half")
    full = _datamodule(tmp_path, make_encoder())
    half = _datamodule(tmp_path, make_encoder(), cache_dtype="float16")
    assert half.cache_key("train") != full.cache_key("train")
    batch = next(iter(half.val_dataloader()))
    assert batch["h"].dtype == torch.float32
    assert torch.allclose(batch["h"], next(iter(full.val_dataloader()))["h"], rtol=2**-10, atol=1e-6)


@pytest.mark.slow
def test_live_training_names_the_unreadable_images_once_per_epoch(tmp_path, make_encoder):
    encoder = make_encoder()
    datamodule = RCDMDataModule(partly_unreadable, resolution=RESOLUTION, batch_size=BATCH, cache=False,
                                cache_dir=str(tmp_path / "cache"), encoder=encoder)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_ExpectsRepresentations(encoder.dim), datamodule=datamodule)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert [message.split(":")[0] for message in messages] == [
        "3 unreadable image(s) skipped in training epoch 0", "3 unreadable image(s) skipped in training epoch 1"]
