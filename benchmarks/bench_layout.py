"""Does ``--precision auto`` / ``--channels-last auto`` pick the faster setting on this CPU?

    python benchmarks/bench_layout.py --out benchmarks/results/speed_layout_epyc.md \
        [--models resnet8 resnet32 wrn_40_2] [--bf16-models resnet8] [--batch 64] \
        [--image-size 32] [--steps 5]

For each model, one SGD training step (forward, cross-entropy, backward, SGD) on a ready
batch of ``--image-size`` images (100 classes) is timed with the default (NCHW) and the
channels_last memory format in fp32 and, for ``--bf16-models``, in bf16 autocast too (on a
CPU without bf16 units bf16 is emulated and several times slower, so a small model suffices);
the settings alternate step by step so that load drifts hit all alike (median of ``--steps``
after one warm-up each). Beside them stands what mhkd's ``auto`` rules choose here and the
fastest setting's speed over it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import command, interleaved_medians, machine, write_results  # noqa: E402

from mhkd import hardware, models  # noqa: E402

NUM_CLASSES = 100
SETTINGS = [(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]


def train_step(name: str, batch: int, size: int, precision: str, channels_last: bool, device):
    """One SGD step of a fresh ``name`` in the given precision and memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = models.create(name, num_classes=NUM_CLASSES).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step() -> None:
        with hardware.autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def label(precision: str, channels_last: bool) -> str:
    return f"{precision} {'channels_last' if channels_last else 'NCHW'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet32", "wrn_40_2"])
    parser.add_argument("--bf16-models", nargs="*", default=["resnet8"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = hardware.default_device()
    precision = hardware.resolve_precision("auto", device)
    layout = hardware.resolve_channels_last("auto", device, precision)
    chosen = label(precision, layout)
    size = args.image_size
    lines = [
        f"Machine: {machine()}. bf16 units detected: {hardware.cpu_has_bf16_units()}.",
        f"Command: `{command()}`",
        "",
        f"Train step (SGD) at batch {args.batch}, {size}×{size}, {NUM_CLASSES} classes, median "
        f"of {args.steps} alternating steps; img/s. `auto` chooses **{chosen}** here.",
        "",
        "| model | "
        + " | ".join(label(*s) for s in SETTINGS)
        + " | fp32 channels_last / NCHW | fastest | fastest / auto |",
        "|---|" + "---|" * (len(SETTINGS) + 3),
    ]
    for name in args.models:
        settings = [s for s in SETTINGS if s[0] == "fp32" or name in args.bf16_models]
        runners = {label(*s): train_step(name, args.batch, size, *s, device) for s in settings}
        medians = interleaved_medians(runners, device, args.steps)
        speed = {k: args.batch / seconds for k, seconds in medians.items()}
        fastest = max(speed, key=speed.get)
        cells = [f"{speed[label(*s)]:.1f}" if label(*s) in speed else "—" for s in SETTINGS]
        layout_gain = speed[label("fp32", True)] / speed[label("fp32", False)]
        ratio = f"{speed[fastest] / speed[chosen]:.2f}" if chosen in speed else "—"
        lines.append(f"| {name} | {' | '.join(cells)} | {layout_gain:.2f} | {fastest} | {ratio} |")
        print(lines[-1], flush=True)
    write_results(lines, args.out)


if __name__ == "__main__":
    main()
