"""rcdm-viewer: a local web page (gradio) over one or several checkpoints (Hydra app over conf/viewer.yaml).

The page's logic is rcdm_lab.viewer (session: views as rcdm-figure figures; app: the page); this module only
reads the config, loads the checkpoints and serves. gradio runs offline: no analytics, no share link, system fonts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rcdm_lab.cli.common import CONF_DIR, chosen_data, hydra_entry, official_settings, run_name_of
from rcdm_lab.cli.sample import pick_device
from rcdm_lab.cli.validation import validate_viewer
from rcdm_lab.errors import RCDMError

# The figure kinds the page renders; their shipped settings are the starting point of every view.
VIEW_KINDS = ("samples", "compare_models", "interpolation", "manipulation")
# Sampling keys the page's controls set: the equivalent command states them itself.
PAGE_CONTROLS = ("sampling.sampler", "sampling.steps", "sampling.guidance", "sampling.seed", "sampling.progress")


def figure_defaults() -> dict[str, dict[str, Any]]:
    """conf/figure/<kind>.yaml of every kind the page renders, as plain dicts."""
    return {kind: OmegaConf.to_container(OmegaConf.load(CONF_DIR / "figure" / f"{kind}.yaml"), resolve=True)
            for kind in VIEW_KINDS}


def command_options() -> list[str]:
    """The viewer's overrides that an equivalent rcdm-figure command must repeat (sampling, official and data
    settings, device, encoder weights), minus those the page's controls set."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        group = key.split(".", 1)[0]
        if group == "sampling" and key not in PAGE_CONTROLS or group in ("official", "data") or \
                key in ("device", "encoder_weights"):
            kept.append(override)
    return kept


def open_session(cfg: DictConfig):
    """The ViewerSession over cfg's checkpoints; those that fail to load are listed on the page, not raised."""
    from rcdm_lab.viewer.session import ViewerSession

    ckpts = [str(c) for c in cfg.ckpts] if cfg.get("ckpts") else [str(cfg.ckpt)] if cfg.get("ckpt") else []
    labels = [str(label) for label in cfg.labels] if cfg.get("labels") else [run_name_of(c) for c in ckpts]
    if len(labels) != len(ckpts):
        raise RCDMError(f"labels has {len(labels)} names for {len(ckpts)} checkpoints: give one per checkpoint")
    sampling = {**OmegaConf.to_container(cfg.sampling, resolve=True), "progress": True}
    session = ViewerSession(models=[], sampling=sampling, out_root=Path(cfg.out), figure_defaults=figure_defaults(),
                            command_options=command_options(), device=pick_device(cfg.device),
                            encoder_weights=cfg.encoder_weights, data=chosen_data(cfg),
                            official=official_settings(cfg))
    for ckpt, label in zip(ckpts, labels, strict=True):
        print(f"rcdm-viewer: {session.load(ckpt, label)}")
    return session


def run(cfg: DictConfig) -> None:
    validate_viewer(cfg)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from rcdm_lab.viewer.app import OFFLINE_THEME, build_app

    session = open_session(cfg)
    app = build_app(session, samples=int(cfg.samples), thumbnails=int(cfg.thumbnails))
    print(f"rcdm-viewer: serving http://{cfg.host}:{cfg.port} (views and saved figures under {cfg.out}); "
          "Ctrl+C stops it", flush=True)
    app.queue().launch(server_name=str(cfg.host), server_port=int(cfg.port), share=False, ssr_mode=False,
                       inbrowser=bool(cfg.open_browser), theme=OFFLINE_THEME, show_error=True, quiet=True,
                       footer_links=["api"])


main = hydra_entry("viewer", run)

if __name__ == "__main__":
    sys.exit(main())
