"""rcdm-demo samples with the sampling group plus its own delta; every command reads the same group."""

from __future__ import annotations

from omegaconf import OmegaConf

from rcdm_testing import compose_config

COMMANDS = {"train": [], "demo": [], "eval": ["ckpt=x"], "figure": ["ckpt=x"], "sample": ["ckpt=x", "images=y"]}


def sampling_of(config_name: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(config_name, *COMMANDS[config_name], *overrides).sampling,
                                  resolve=True)


def test_a_sampling_default_lives_in_one_place():
    # What no command changes is the same everywhere; what one changes is its documented delta.
    shared = {"eta", "precision"}
    values = {name: sampling_of(name) for name in COMMANDS}
    assert all({k: v[k] for k in shared} == {"eta": None, "precision": "auto"} for v in values.values())
    assert {k: values["demo"][k] for k in ("sampler", "steps", "guidance", "batch_size")} == {
        "sampler": "dpmpp_2m", "steps": 20, "guidance": 8.0, "batch_size": 32}   # sampling=guided + its delta
    # Figures and evaluation sample with the measured default (experiments/samplers), the paper's one override away.
    assert (values["eval"]["sampler"], values["eval"]["steps"], values["eval"]["guidance"]) == ("dpmpp_2m_sde", 20, 1.0)
    assert (sampling_of("eval", "sampling=paper")["sampler"], sampling_of("eval", "sampling=paper")["steps"]) == (
        "ddpm", 100)
    assert (values["sample"]["sampler"], values["sample"]["steps"]) == ("ddpm", 100)   # the paper's, as before
    assert values["train"]["progress"] is False and values["eval"]["progress"] is True
    assert sampling_of("demo", "seed=3")["seed"] == 3   # the demo's run seed also fixes its samples


def test_the_demo_samples_plain_and_guided_with_its_sampling_settings(trained_checkpoint, tmp_path, monkeypatch):
    from rcdm_lab.cli import demo
    from rcdm_lab.pipeline import RCDMPipeline

    calls = []
    original = RCDMPipeline.sample

    def recording(self, h, k, **settings):
        calls.append({key: settings[key] for key in ("sampler", "steps", "guidance", "batch_size", "seed")})
        return original(self, h, k, **settings)

    monkeypatch.setattr(RCDMPipeline, "sample", recording)
    cfg = compose_config("demo", "demo.num_conditionings=4", "demo.samples_per_conditioning=2", "sampling.steps=2",
                         f"output_dir={tmp_path}")
    results = demo.evaluate(cfg, trained_checkpoint)
    assert [call["guidance"] for call in calls] == [1.0, 8.0, 8.0]   # held-out plain, guided, then the photos
    assert all(call | {"guidance": None} == {"sampler": "dpmpp_2m", "steps": 2, "guidance": None,
                                             "batch_size": 32, "seed": 0} for call in calls)
    assert (tmp_path / "samples.png").is_file() and set(results) >= {"faithfulness_guidance_1",
                                                                     "faithfulness_guidance_8"}


def test_a_reused_demo_run_does_not_report_the_last_trainings_timing(tmp_path, monkeypatch, capsys):
    import json

    from rcdm_lab.cli import demo

    (tmp_path / "timing.json").write_text(json.dumps({"steps": 50, "train_seconds": 13.0, "ms_per_step": 252.0,
                                                      "precision": "bf16-mixed"}))   # from an earlier run
    monkeypatch.setattr(demo, "train", lambda cfg: tmp_path / "last.ckpt")   # finished: no step runs
    monkeypatch.setattr(demo, "evaluate", lambda cfg, ckpt: {"samples_png": str(tmp_path / "samples.png")})
    results = demo.run(compose_config("demo", f"output_dir={tmp_path}"))
    out = capsys.readouterr().out
    assert "50 training steps" not in out and "already trained to the end" in out
    assert results["timing"] == {}
