"""The ADM diffusion UNet conditioned on a representation, and loading of official RCDM checkpoints."""

from rcdm_lab.models.official import OFFICIAL_128_FLAGS, load_official_unet, unet_kwargs_from_flags
from rcdm_lab.models.unet import UNetModel

__all__ = ["OFFICIAL_128_FLAGS", "UNetModel", "load_official_unet", "unet_kwargs_from_flags"]
