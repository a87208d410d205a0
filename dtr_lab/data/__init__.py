"""LightningDataModules yielding (x in [-1, 1] NCHW float, y long) batches."""

from dtr_lab.data.base import ImageDataModule
from dtr_lab.data.digits import DigitsDataModule

__all__ = ["ImageDataModule", "DigitsDataModule"]
