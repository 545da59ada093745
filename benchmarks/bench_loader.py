"""Images/s of the streaming loader on real-format JPEGs, and its cost to a training step.

    python benchmarks/bench_loader.py --out benchmarks/results/loader.md \
        [--images 320] [--batch-size 32] [--workers 1 2] [--steps 4] [--rounds 2] \
        [--image-size 224] [--model auto]

Writes ``--images`` JPEGs (quality 90) of ImageNet's typical sizes (500×375, 375×500,
500×333, 333×500, 500×500, 400×300) in its layout into a temporary folder, then measures:

* ``loader``: images/s of one training pass — decode with Pillow, random-resized crop to
  ``--image-size`` and flip in the workers, uint8 to the main process, float conversion and
  ImageNet normalisation there — for each ``--workers`` count, after a warm-up pass that
  starts the persistent workers;
* ``step``: seconds per SGD step of ``--model`` (``auto``: ``resnet18`` when the model
  registry has it, else the CIFAR ``resnet56`` at ``--image-size``), fed by the loader with
  the most workers, against the same step fed one pre-decoded batch already on the device.
  The runners alternate for ``--rounds`` rounds of ``--steps`` timed steps so load drifts hit
  both; each loader round first uses up, untimed, the batches the workers decoded ahead while
  the other runner ran, so its timed steps wait on live decoding. ``loader cost`` is
  1 − tensors/loader of the median per-step times. Where other processes load the machine
  that difference drowns in noise, so the decoding work per step (batch over the images/s of
  the fewest workers, times their number) is set against the tensor-fed step as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import command, machine, sync, write_results  # noqa: E402

from mhkd import data, hardware, models  # noqa: E402

SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (400, 300)]
NUM_CLASSES = 10
DEFAULT_PREFETCH = 2  # batches each DataLoader worker decodes ahead


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random colour fields plus sensor-like noise: compresses about like a photo."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    noisy = smooth + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_jpegs(root: Path, count: int) -> int:
    """``count`` training JPEGs over ``NUM_CLASSES`` classes and one test image per class;
    returns the bytes written for training."""
    rng = np.random.default_rng(0)
    written = 0
    for split, n in (("train", count), ("val", NUM_CLASSES)):
        for i in range(n):
            folder = root / split / f"n{i % NUM_CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}_{i:06d}.JPEG"
            photo(*SIZES[i % len(SIZES)], rng).save(path, quality=90)
            written += path.stat().st_size if split == "train" else 0
    return written


def loader_rate(splits: data.StreamingSplits, batch_size: int, workers: int) -> float:
    """Images/s of the second of two training passes (the first starts the workers)."""
    train, _ = data.make_loaders(splits, batch_size, workers=workers)
    for _ in train:
        pass
    train.set_epoch(1)
    start = time.perf_counter()
    seen = sum(len(batch.labels) for batch in train)
    return seen / (time.perf_counter() - start)


def batches_forever(loader: data.StreamLoader) -> Iterator[data.Batch]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def pick_model(name: str) -> str:
    if name != "auto":
        return name
    return "resnet18" if "resnet18" in models.available() else "resnet56"


def step_times(args: argparse.Namespace, splits: data.StreamingSplits) -> dict[str, float]:
    """Median seconds per step fed by the loader and by a ready device tensor."""
    device = hardware.default_device()
    precision = hardware.resolve_precision("auto", device)
    channels_last = hardware.resolve_channels_last("auto", device, precision)
    torch.manual_seed(0)
    model = models.create(args.model, num_classes=NUM_CLASSES).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train, _ = data.make_loaders(
        splits, args.batch_size, device=device, channels_last=channels_last,
        workers=max(args.workers),
    )  # fmt: skip
    stream = batches_forever(train)
    ready = next(stream)

    def step(batch: data.Batch) -> None:
        with hardware.autocast(device, precision):
            loss = F.cross_entropy(model(batch.images).float(), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    runners = {"tensors": lambda: step(ready), "loader": lambda: step(next(stream))}
    # batches the workers decoded ahead while the other runner ran: use them up untimed
    buffered = {"tensors": 1, "loader": DEFAULT_PREFETCH * train.workers + 1}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            for _ in range(buffered[name]):
                run()
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    return {name: statistics.median(t) for name, t in times.items()} | {"precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.model = pick_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_jpegs(Path(tmp), args.images)
        splits = data.load("imagenet", tmp, image_size=args.image_size)
        rates = {w: loader_rate(splits, args.batch_size, w) for w in args.workers}
        times = step_times(args, splits)
    cost = 1 - times["tensors"] / times["loader"]
    decode = args.batch_size * min(args.workers) / rates[min(args.workers)]
    size = args.image_size
    lines = [
        f"Machine: {machine()}; precision {times['precision']}.",
        f"Command: `{command()}`",
        "",
        f"{args.images} JPEGs (quality 90, {written / args.images / 1e3:.0f} kB on average) of "
        f"sizes {', '.join(f'{w}×{h}' for w, h in SIZES)}; RandomResizedCrop({size}) + flip; "
        f"batch {args.batch_size}.",
        "",
        "| loader workers | images/s |",
        "|---|---|",
        *(f"| {w} | {rate:.0f} |" for w, rate in rates.items()),
        "",
        f"{args.model} train step at {size}×{size}, batch {args.batch_size}, median of "
        f"{args.rounds} rounds of {args.steps} steps:",
        "",
        "| fed by | s/step | images/s |",
        "|---|---|---|",
        f"| pre-decoded tensors on the device | {times['tensors']:.3f} | "
        f"{args.batch_size / times['tensors']:.1f} |",
        f"| the loader, {max(args.workers)} workers | {times['loader']:.3f} | "
        f"{args.batch_size / times['loader']:.1f} |",
        "",
        f"Loader cost: {100 * cost:.1f} % of the loader-fed step.",
        "",
        f"Decoding work per step: {decode:.3f} s of one worker ({args.batch_size} images at "
        f"{rates[min(args.workers)]:.0f} images/s with {min(args.workers)} worker(s)). Were it "
        f"not overlapped with the step at all, it would cost "
        f"{100 * decode / (decode + times['tensors']):.1f} % of the step (an upper bound "
        "that timing noise on a busy machine does not blur).",
    ]
    write_results(lines, args.out)


if __name__ == "__main__":
    main()
