"""The backbone-vs-head study driver (experiments/backbone_vs_head/study.py): its command line and its report."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from rcdm_testing import REPO


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO / "experiments" / "backbone_vs_head" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_settings_come_from_the_command_line_with_their_types():
    study = _study()
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(work=Path("w"), out=Path("o"), set=["num_conditionings=128", "guidances=1,8",
                                                                   "eps=0,4/255", "sampler=ddpm"],
                              pretrain_args="epochs=10 'network.widths=[8,16,32]'", train_args="")
    settings = study.parse_settings(args, parser)
    assert settings.num_conditionings == 128 and settings.guidances == (1.0, 8.0)
    assert settings.eps == ("0", "4/255") and settings.sampler == "ddpm"
    assert settings.pretrain_overrides == ("epochs=10", "network.widths=[8,16,32]")


def test_a_bad_setting_is_refused_naming_the_fields(capsys):
    with pytest.raises(SystemExit):
        _study().main(["--set", "num_conditionigs=3"])
    assert "num_conditionings" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ report stage
def _write_evaluations(study, work: Path, backbones_keep: bool, supervised_flips: bool) -> None:
    """Synthetic evaluate-stage files whose verdicts are known: samples that show every conditioning's true value
    (kept = 1) or never (kept = 0) for the SSL backbones vs heads; FGSM flipping every or no supervised probe."""
    import torch

    n, k, classes = 40, 4, 4
    factors = (*study.AUGMENTED_FACTORS, "shape", "texture")
    generator = torch.Generator().manual_seed(0)
    truth = {f: torch.randint(classes, (n,), generator=generator) for f in factors}
    keeps = {f: truth[f].repeat_interleave(k) for f in factors}
    misses = {f: ((truth[f] + 1) % classes).repeat_interleave(k) for f in factors}
    eps = study.StudySettings().eps
    m = 8
    (work / "eval").mkdir(parents=True)
    for model in study.MODELS:
        method, _, layer = model.partition("_")
        shows_truth = model == "oracle" or method == "supervised" or (layer == "backbone") == backbones_keep
        predicted = keeps if shows_truth else misses
        result = {"model": model, "truth": truth, "real_predicted": truth,
                  "num_classes": dict.fromkeys(factors, classes),
                  "classifier": {"val_accuracy": dict.fromkeys(factors, 1.0),
                                 "val_majority": dict.fromkeys(factors, 0.3),
                                 "num_train": 100, "num_val": 50, "train_seconds": 1.0},
                  "guidance": {g: {"predicted": predicted} for g in (1.0, 3.0)}, "seconds": 1.0}
        if layer == "backbone":
            flips = supervised_flips if method == "supervised" else not supervised_flips
            flipped = torch.zeros(len(eps), 16, dtype=torch.bool)
            flipped[1:] = flips  # eps = 0 never flips
            per_factor = {f: {"probe": {"val_acc": 1.0}, "flipped": flipped, "clean_correct": torch.ones(16).bool()}
                          for f in ("texture", "shape")}
            sampled = {f: truth[f][:m].repeat_interleave(2) for f in factors}
            result["adversarial"] = {"eps": list(eps), "factors": per_factor, "sampled_factor": "texture",
                                     "predicted": dict.fromkeys(eps, sampled),
                                     "truth": {f: truth[f][:m] for f in factors}}
            result["manipulation"] = {"png": str(work / f"manipulation_{model}.png"), "mask_sizes": [3] * 4,
                                      "threshold": 0.1, "query_truth": {f: truth[f][:4] for f in factors},
                                      "target_truth": {f: truth[f][4:8] for f in factors},
                                      "predicted": {f: truth[f][:4].repeat_interleave(2) for f in factors}}
        torch.save(result, work / "eval" / f"{model}.pt")


@pytest.mark.parametrize(("backbones_keep", "supervised_flips", "expected"), [
    (True, True, "reproduced"),        # the paper's picture: every claim's difference excludes 0 the claimed way
    (False, False, "not reproduced"),  # heads keep, backbones do not; the SSL probes flip, the supervised one not
])
def test_the_report_turns_known_differences_into_their_verdicts(tmp_path, backbones_keep, supervised_flips,
                                                                 expected):
    import json

    study = _study()
    _write_evaluations(study, tmp_path / "work", backbones_keep, supervised_flips)
    settings = study.StudySettings(work=tmp_path / "work", out=tmp_path / "out", num_conditionings=40,
                                   adversarial_sampled=8, manipulation_queries=4, manipulation_samples=2)
    study.report(settings)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {claim: value["verdict"] for claim, value in results["claims"].items()} == {
        "i_backbone_not_invariant": expected, "ii_head_invariant": expected, "iii_ssl_more_robust": expected}
    simclr_backbone = results["models"]["simclr_backbone"]["guidance_1"]
    assert simclr_backbone["object_colour"]["mean"] == (1.0 if backbones_keep else 0.0)
    # Each conditioning's k samples show one value: nothing varies, whatever they show.
    assert results["models"]["simclr_head"]["varies_guidance_3"]["x"]["mean"] == 0.0
    assert results["adversarial"]["supervised"]["texture"]["flip_rate"]["2/255"] == float(supervised_flips)
    # The edited h's samples all show the query's value (truth[:4], twice each): kept 1, nothing varies.
    shape = results["manipulation"]["vicreg"]["factors"]["shape"]
    assert (shape["kept_query"]["mean"], shape["varies"]["mean"]) == (1.0, 0.0)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert f"**{expected}**" in markdown and "ceiling (classifier on the conditioning images)" in markdown
    for plot in ("kept_guidance_1.png", "kept_guidance_3.png", "fgsm_flip_rate.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 0
