"""Data sets as uint8 tensors, batched device-side augmentation and device-resident loaders."""

from mhkd.data.augment import IDENTITY_VIEW, NUM_VIEWS, apply_views, normalize, random_views
from mhkd.data.base import DataError, DataSplits, ImageSet
from mhkd.data.batch import Batch
from mhkd.data.loader import DeviceLoader, make_loaders
from mhkd.data.registry import available, default_root, load

__all__ = [
    "IDENTITY_VIEW",
    "NUM_VIEWS",
    "Batch",
    "DataError",
    "DataSplits",
    "DeviceLoader",
    "ImageSet",
    "apply_views",
    "available",
    "default_root",
    "load",
    "make_loaders",
    "normalize",
    "random_views",
]
