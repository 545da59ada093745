"""ImageNet (ILSVRC-2012) in its usual layout, streamed: ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG`` with the validation images already sorted into class folders."""

from __future__ import annotations

from pathlib import Path

from mhkd.data.base import DataError
from mhkd.data.files import StreamingSplits, streaming_splits

LAYOUT = "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (val sorted into class folders)"


def load_imagenet(
    root: Path,
    download: bool,
    image_size: int = 224,
    resize_size: int | None = None,
    skip_bad: bool = False,
) -> StreamingSplits:
    """Classes are the train folders (wnids) sorted; images ``image_size``² (evaluation resizes
    the shorter side to ``resize_size``, by default 256/224 of ``image_size``). ImageNet's
    licence forbids downloading it for the user, so ``download`` changes nothing."""
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise DataError(f"imagenet: {folder} is no folder of class folders; expected {LAYOUT}")
    return streaming_splits(
        "imagenet", root / "train", root / "val", image_size, resize_size, skip_bad
    )
