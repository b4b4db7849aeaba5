"""The faithfulness callback logs rcdm-eval's numbers on its interval, refuses bad settings, and costs nothing off."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from rcdm_lab.cli.eval import evaluate
from rcdm_lab.cli.train import train
from rcdm_lab.cli.validation import validate_train
from rcdm_lab.errors import RCDMError
from rcdm_lab.metrics import faithfulness
from rcdm_lab.training.faithfulness_callback import LOGGED, FaithfulnessCallback
from rcdm_testing import compose_config, compose_train

COLUMNS = [f"faithfulness/{scale}{name}" for scale in ("", "guided_") for name in LOGGED]


@pytest.mark.slow
def test_logged_on_the_interval_only_and_equal_to_rcdm_eval_on_the_final_checkpoint(tmp_path, monkeypatch):
    # Record every sample → encode → rank call: the callback's and rcdm-eval's go through the same function.
    calls = []
    original = faithfulness.measure

    def recorded(run, items, gallery, k, sampling, distances, **kwargs):
        samples, ranks = original(run, items, gallery, k, sampling, distances, **kwargs)
        calls.append({"guidance": sampling["guidance"], "samples": samples, "ranks": ranks})
        return samples, ranks

    monkeypatch.setattr(faithfulness, "measure", recorded)
    # Guidance 3 for the guided scale (condition dropout makes it possible); steps 2 and 4 on the interval, and the
    # logger flushes every 3 steps, so neither the loss rows nor the final flush line up with the measurements.
    cfg = compose_train(tmp_path, "trainer.max_steps=4", "trainer.log_every_n_steps=3", "model.cond_drop=0.2",
                        "sampling.guidance=3", "callbacks.preview=null", "callbacks.faithfulness.every_n_steps=2",
                        "callbacks.faithfulness.num_conditionings=4", "callbacks.faithfulness.steps=2")
    ckpt = train(cfg)

    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    measured = [row for row in rows if any(row.get(column) for column in COLUMNS)]
    assert [int(row["step"]) for row in measured] == [2, 4]   # not at step 0 or 3, not again at the end
    assert all(row[column] for row in measured for column in COLUMNS)
    assert any(row.get("train/loss") for row in rows)   # the loss rows of the same file carry no faithfulness
    final = measured[-1]
    callback_calls = calls[:]
    assert [call["guidance"] for call in callback_calls] == [1.0, 3.0, 1.0, 3.0]

    for guidance, scale in ((1.0, ""), (3.0, "guided_")):
        out = tmp_path / f"eval-{guidance:g}"
        eval_cfg = compose_config("eval", "metric=faithfulness", f"ckpt={ckpt}", f"output_dir={out}",
                                  "metric.faithfulness.num_conditionings=4",
                                  "metric.faithfulness.samples_per_conditioning=1",
                                  "metric.faithfulness.distances=[l2]", "sampling.steps=2",
                                  f"sampling.guidance={guidance}", "sampling.progress=false")
        result = evaluate(eval_cfg, str(ckpt), out)["faithfulness"]["l2"]
        for name in LOGGED:
            assert float(final[f"faithfulness/{scale}{name}"]) == pytest.approx(result[name], rel=1e-6), name
        # Beyond three summary numbers of 4 ranks: the very samples match, i.e. the same EMA weights (those of
        # the final step, which last.ckpt holds), guidance, steps and seed -- a seed or weights off would differ.
        at_final_step = callback_calls[2 if guidance == 1.0 else 3]
        torch.testing.assert_close(at_final_step["samples"], calls[-1]["samples"], rtol=0, atol=1e-6)
        assert torch.equal(at_final_step["ranks"]["l2"], calls[-1]["ranks"]["l2"])
    assert not torch.equal(callback_calls[0]["samples"], callback_calls[2]["samples"])   # step 2's model is another


# ------------------------------------------------------------------------------------------ without training
@pytest.mark.parametrize(("setting", "value"), [("every_n_steps", -1), ("num_conditionings", 0),
                                                ("distance", "manhattan")])
def test_bad_settings_are_refused_naming_the_key(tmp_path, setting, value):
    with pytest.raises(RCDMError, match=rf"callbacks\.faithfulness\.{setting}="):
        FaithfulnessCallback(sampling={}, **{setting: value})
    # rcdm-train refuses it before rendering or caching anything.
    with pytest.raises(RCDMError, match=rf"callbacks\.faithfulness\.{setting}="):
        validate_train(compose_train(tmp_path, f"callbacks.faithfulness.{setting}={value}"))


class _Counted:
    """A datamodule, pipeline and logger that count what the callback asks of them."""

    def __init__(self, supports_guidance: bool = True) -> None:
        self.touched: list[str] = []
        self.logged: list[tuple[int, dict]] = []
        self.supports_guidance = supports_guidance
        self.unet = torch.nn.Linear(1, 1)
        self.unet.train()

    # datamodule
    def dataset(self, split: str) -> range:
        self.touched.append(f"dataset {split}")
        return range(8)

    def val_items(self, n: int) -> dict:
        self.touched.append("val_items")
        return {"h": torch.eye(8)[:n], "index": torch.arange(n), "image": torch.zeros(n, 3, 4, 4)}

    def source(self, split: str) -> SimpleNamespace:
        self.touched.append(f"source {split}")
        return SimpleNamespace(representations=lambda: torch.eye(8))

    # pipeline
    def sample(self, h: torch.Tensor, k: int, **settings) -> torch.Tensor:
        self.touched.append(f"sample at guidance {settings['guidance']:g}")
        assert not self.unet.training   # sampled in eval mode
        return torch.zeros(len(h) * k, 3, 4, 4)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.eye(8)[: len(images)]   # every sample encodes as its own conditioning: rank 1

    # logger
    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))

    def trainer(self, step: int) -> SimpleNamespace:
        return SimpleNamespace(global_step=step, datamodule=self, loggers=[self], checkpoint_callback=None,
                               default_root_dir="run")

    def module(self) -> SimpleNamespace:
        return SimpleNamespace(pipeline=lambda: self)


def _train(callback: FaithfulnessCallback, counted: _Counted, steps: list[int]) -> None:
    callback.on_train_start(counted.trainer(0), counted.module())
    for step in steps:
        callback.on_train_batch_end(counted.trainer(step), counted.module(), None, None, 0)


def test_off_it_touches_neither_data_nor_model_and_logs_nothing():
    counted = _Counted()
    callback = FaithfulnessCallback(sampling={"guidance": 3.0}, every_n_steps=0)
    _train(callback, counted, list(range(1, 11)))
    assert counted.touched == [] and counted.logged == [] and callback.blocked_seconds == []


def test_once_per_step_on_the_interval_and_guided_only_where_the_model_guides():
    counted = _Counted()
    callback = FaithfulnessCallback(sampling={"guidance": 3.0, "steps": 20}, every_n_steps=2, num_conditionings=4)
    _train(callback, counted, [1, 2, 2, 3, 4])   # step 2 twice: gradient accumulation
    assert [step for step, _ in counted.logged] == [2, 4] and len(callback.blocked_seconds) == 2
    assert counted.logged[0][1] == {f"faithfulness/{scale}{name}": value for scale in ("", "guided_")
                                    for name, value in (("top1", 1.0), ("mrr", 1.0), ("mean_rank", 1.0))}
    assert counted.unet.training   # its mode restored
    plain = _Counted(supports_guidance=False)
    _train(FaithfulnessCallback(sampling={"guidance": 3.0}, every_n_steps=2, num_conditionings=4), plain, [2])
    assert set(plain.logged[0][1]) == {f"faithfulness/{name}" for name in LOGGED}
    assert [t for t in plain.touched if t.startswith("sample")] == ["sample at guidance 1"]


def test_asking_for_more_conditionings_than_the_validation_split_fails_before_training():
    counted = _Counted()
    callback = FaithfulnessCallback(sampling={}, every_n_steps=2, num_conditionings=9)
    with pytest.raises(RCDMError, match=r"callbacks\.faithfulness\.num_conditionings: asked for 9"):
        callback.on_train_start(counted.trainer(0), counted.module())



@pytest.mark.slow
def test_measuring_does_not_change_what_is_trained(tmp_path):
    # The callback samples with its own seeded generator; if it drew from the global RNG (the data order, condition
    # dropout, t and noise draws), a run that measures would train another model than one that does not.
    def final_weights(folder, *extra):
        # 32 items in batches of 8: step 5 starts a second epoch, whose order is shuffled anew.
        cfg = compose_train(tmp_path / folder, "trainer.max_steps=6", "model.cond_drop=0.2", "callbacks.preview=null",
                            *extra)
        return torch.load(train(cfg), map_location="cpu", weights_only=False)["state_dict"]

    off = final_weights("off")
    on = final_weights("on", "callbacks.faithfulness.every_n_steps=1", "callbacks.faithfulness.num_conditionings=2",
                       "callbacks.faithfulness.steps=2")
    assert off.keys() == on.keys()
    assert all(torch.equal(off[key], on[key]) for key in off)
