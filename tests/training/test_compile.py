"""model.compile=true compiles the training UNet in place: same weights and state-dict keys, an eager EMA."""

from __future__ import annotations

import pytest

from rcdm_lab.cli.train import build
from rcdm_lab.cli.validation import validate_train
from rcdm_lab.errors import RCDMError
from rcdm_testing import compose_train


def test_compile_is_off_by_default_and_in_place_when_asked(tmp_path):
    plain = build(compose_train(tmp_path, "trainer.max_steps=1"))[0]
    plain.setup("fit")
    assert plain.unet._compiled_call_impl is None

    module = build(compose_train(tmp_path, "trainer.max_steps=1", "model.compile=true"))[0]
    keys = list(module.state_dict())
    module.setup("fit")   # compilation itself is lazy: nothing is compiled until the first forward
    assert module.unet._compiled_call_impl is not None
    assert module.ema.module._compiled_call_impl is None           # sampling stays eager
    assert list(module.state_dict()) == keys                       # checkpoints keep the plain UNet's keys


def test_a_non_boolean_compile_is_refused(tmp_path):
    with pytest.raises(RCDMError, match="model.compile"):
        validate_train(compose_train(tmp_path, "model.compile=yes_please"))
