"""rcdm_lab: Representation-Conditional Diffusion Models (Bordes et al., TMLR 2022) on Lightning + Hydra."""

__version__ = "0.1.0"
