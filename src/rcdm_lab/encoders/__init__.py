"""Frozen image encoders f whose representations h = f(x) condition RCDM."""

from rcdm_lab.encoders.frozen import FrozenEncoder
from rcdm_lab.encoders.registry import build_encoder, known_encoders, load_encoder

__all__ = ["FrozenEncoder", "build_encoder", "known_encoders", "load_encoder"]
