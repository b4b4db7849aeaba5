"""Datasets (the RCDMDataset contract), the representation cache and source, and the Lightning data module."""

from rcdm_lab.data.base import RCDMDataset
from rcdm_lab.data.cache import RepresentationCache, cache_key
from rcdm_lab.data.cifar import Cifar10Dataset
from rcdm_lab.data.datamodule import RCDMDataModule
from rcdm_lab.data.folder import FolderDataset, list_images, load_image
from rcdm_lab.data.representations import RepresentationSource
from rcdm_lab.data.shapes import SHAPE_CLASSES, ShapesDataset

__all__ = [
    "SHAPE_CLASSES",
    "Cifar10Dataset",
    "FolderDataset",
    "RCDMDataModule",
    "RCDMDataset",
    "RepresentationCache",
    "RepresentationSource",
    "ShapesDataset",
    "cache_key",
    "list_images",
    "load_image",
]
