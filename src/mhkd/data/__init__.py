"""Data sets: small ones as uint8 tensors with batched device-side augmentation and
device-resident loaders; large ones as file lists streamed by worker processes."""

from mhkd.data.augment import IDENTITY_VIEW, NUM_VIEWS, apply_views, normalize, random_views
from mhkd.data.base import DataError, DataSplits, ImageSet
from mhkd.data.batch import Batch, Loader
from mhkd.data.files import IMAGENET_MEAN, IMAGENET_STD, FileSet, StreamingSplits
from mhkd.data.loader import DeviceLoader, make_loaders
from mhkd.data.registry import available, default_root, load
from mhkd.data.stream import StreamLoader, default_workers
from mhkd.data.subset import subset_per_class

Splits = DataSplits | StreamingSplits  # what load returns and make_loaders takes

__all__ = [
    "IDENTITY_VIEW",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_VIEWS",
    "Batch",
    "DataError",
    "DataSplits",
    "DeviceLoader",
    "FileSet",
    "ImageSet",
    "Loader",
    "Splits",
    "StreamLoader",
    "StreamingSplits",
    "apply_views",
    "available",
    "default_root",
    "default_workers",
    "load",
    "make_loaders",
    "normalize",
    "random_views",
    "subset_per_class",
]
