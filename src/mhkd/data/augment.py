"""Batched crop/flip augmentation and normalisation as tensor ops on the data's device.

Each sample's augmentation is one integer, its *view*: ``flip * 81 + dy * 9 + dx``, where
``dy, dx`` in 0..8 is the crop's offset inside the image zero-padded by 4 pixels. The same view
always yields the same image, so a teacher's outputs can be cached per (sample, view).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAD = 4
OFFSETS = 2 * PAD + 1
NUM_VIEWS = 2 * OFFSETS * OFFSETS
IDENTITY_VIEW = PAD * OFFSETS + PAD  # centred crop, no flip: the original image


def random_views(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """``n`` views drawn uniformly from all 162, from ``generator`` (on its own device)."""
    views = torch.randint(NUM_VIEWS, (n,), generator=generator, device=generator.device)
    return views.to(device)


def apply_views(images: Tensor, views: Tensor) -> Tensor:
    """Crop (after zero padding) and flip each uint8 image N×C×H×W as its view says.

    One gather with per-sample row and column index grids; no Python loop over samples.
    """
    n, c, h, w = images.shape
    device = images.device
    views = views.to(device)
    flip = (views // (OFFSETS * OFFSETS)).bool()
    dy = views // OFFSETS % OFFSETS
    dx = views % OFFSETS
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def normalize(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    channels_last: bool = False,
) -> Tensor:
    """uint8 images to float32 ``(x / 255 - mean) / std`` per channel, optionally NHWC-strided."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    out = (images.float() / 255.0 - mean_t) / std_t
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
