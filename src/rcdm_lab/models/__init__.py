"""The ADM diffusion UNet conditioned on a representation, and loading of official RCDM checkpoints."""

from rcdm_lab.models.official import OFFICIAL_128_FLAGS, load_official_unet, unet_kwargs_from_flags
from rcdm_lab.models.unet import UNetModel, learns_sigma, unet_out_channels

__all__ = [
    "OFFICIAL_128_FLAGS",
    "UNetModel",
    "learns_sigma",
    "load_official_unet",
    "unet_kwargs_from_flags",
    "unet_out_channels",
]
