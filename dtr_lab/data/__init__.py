"""LightningDataModules yielding (x in [-1, 1] NCHW float, y long) batches.

Every module has `decode(x)`, samples -> images: the identity for image data; LatentDataModule's
samples are VAE latents, which its `decode(z)` turns into images for grids and metrics.
"""

from dtr_lab.data.base import ImageDataModule
from dtr_lab.data.cifar10 import CIFAR10DataModule
from dtr_lab.data.digits import DigitsDataModule
from dtr_lab.data.image_folder import ImageFolderDataModule
from dtr_lab.data.latents import LatentDataModule

__all__ = [
    "ImageDataModule",
    "DigitsDataModule",
    "CIFAR10DataModule",
    "ImageFolderDataModule",
    "LatentDataModule",
]
