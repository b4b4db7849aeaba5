"""An RCDM on the oracle (encoder=factors) trains through rcdm-train, and its samples are refused by the encoder."""

from __future__ import annotations

import pytest
import torch

from rcdm_lab.cli.train import train, validate_train
from rcdm_lab.errors import RCDMError
from rcdm_lab.trained_run import TrainedRun
from rcdm_testing import compose_train


@pytest.mark.slow
def test_oracle_rcdm_trains_and_conditions_on_the_true_factors(tmp_path):
    ckpt = train(compose_train(tmp_path, "encoder=factors", "data.flip=false", "callbacks.preview=null"))
    run = TrainedRun.load(ckpt)
    # The cached conditioning of each validation item is its one-hot shape, colours and texture (then 4 values).
    items = run.val_items(4)
    labels = items["labels"]
    assert torch.equal(items["h"][:, :8].argmax(dim=1), labels["shape"])
    assert torch.equal(items["h"][:, 8:16].argmax(dim=1), labels["object_colour"])
    samples = run.sample(items["h"][:1], 1, {"sampler": "ddim", "steps": 2})
    with pytest.raises(RCDMError, match="only items of its dataset"):
        run.pipeline.encode(samples)


def test_oracle_with_flipped_training_images_is_refused_before_any_work(tmp_path):
    cfg = compose_train(tmp_path, "encoder=factors", "data.flip=true")
    with pytest.raises(RCDMError, match="data.flip=false"):
        validate_train(cfg)
