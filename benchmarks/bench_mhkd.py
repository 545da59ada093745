"""Train-step cost of MHKD against Hinton KD, side by side in one run, with its bounds.

    python benchmarks/bench_mhkd.py [--steps 3] [--batch 64] [--threads 1] [--out FILE]

For wrn_40_2→wrn_16_2, resnet32x4→resnet8x4 and vgg13→mobilenetv2 on CIFAR-100-shaped
synthetic data, it times one training step (:func:`make_step`: autocast, teacher without a
graph with its layers tapped, student, loss terms, weighted sum, backward, SGD) of ``kd``,
``kd`` with cached teacher logits, ``mhkd`` with jointly trained teacher heads (the default),
``mhkd`` with pre-fitted teacher heads served from a teacher cache, and ``mhkd`` with the
paper-literal stride-1 heads. All steps alternate so machine load hits all alike.

Two bounds stand beside each ratio to the KD step. The multiply-accumulate bound: teacher
forward + 3 × student forward (forward and backward) + the heads' forward and backward, over
KD's teacher forward + 3 × student forward (with a cache the teacher and its heads cost
nothing; a trained head's backward counts 2 × its forward, less the teacher heads' first
input gradient, which the frozen teacher's feature does not need). It assumes every MAC costs
the same, which depthwise convolutions (MobileNetV2) do not. Hence the second: the heads'
own step timed alone (their forward, backward and SGD on feature tensors of their input
shapes), and the MHKD step over the KD step (the cached-logits one for cached variants) plus
that; at most 1.10 means mhkd adds at most 10 % beyond the heads' own arithmetic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import command, interleaved_medians, machine, write_results  # noqa: E402

from mhkd import data, hardware, models  # noqa: E402
from mhkd.data.batch import Batch  # noqa: E402
from mhkd.methods import MethodContext, MethodSet, ModelOutput  # noqa: E402
from mhkd.methods.mhkd import MHKDOptions  # noqa: E402
from mhkd.models.complexity import count_macs  # noqa: E402
from mhkd.taps import Taps  # noqa: E402
from mhkd.teacher_cache import TeacherCache, build_cache, cached_outputs, open_cache  # noqa: E402

PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4"), ("vgg13", "mobilenetv2")]
#: label: (method, its options, served from a teacher cache)
VARIANTS: dict[str, tuple[str, MHKDOptions | None, bool]] = {
    "kd": ("kd", None, False),
    "kd, cached logits": ("kd", None, True),
    "mhkd joint": ("mhkd", MHKDOptions(), False),
    "mhkd prefit, cached heads": ("mhkd", MHKDOptions(head_mode="prefit", prefit_epochs=0), True),
    "mhkd joint, stride-1 heads": ("mhkd", MHKDOptions(head_stride=1), False),
}
CLASSES = 100


def make_step(
    student: nn.Module,
    teacher: nn.Module,
    methods: MethodSet,
    cache: TeacherCache | None,
    device: torch.device,
    precision: str,
) -> Callable[[Batch], None]:
    """One training step as the loop takes it; swap in the loop's own step once it settles."""
    trained = [p for m in (student, methods) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.05, momentum=0.9, weight_decay=5e-4)
    student_taps = Taps(student, methods.student_layers)
    teacher_taps = Taps(teacher, methods.teacher_layers if cache is None else [])
    student.train()
    methods.train()
    teacher.eval()

    def step(batch: Batch) -> None:
        with hardware.autocast(device, precision):
            if cache is not None:
                teacher_out = cache.lookup(batch.indices, batch.views)
            else:
                with torch.no_grad():
                    logits = teacher(batch.images)
                teacher_out = ModelOutput(logits, teacher_taps.pop())
            logits = student(batch.images)
            student_out = ModelOutput(logits, student_taps.pop())
            terms = {"ce": F.cross_entropy(logits.float(), batch.labels)}
            terms.update(methods(student_out, teacher_out, batch))
            loss = sum(methods.weights[name] * value for name, value in terms.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def make_heads_step(
    methods: MethodSet,
    batch: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    cached: bool,
) -> Callable[[], None]:
    """The heads' share of a step, alone: forward, backward and SGD on random features; the
    student heads' inputs need gradients, the teacher heads run only where no cache serves
    them (trained in joint mode, under ``no_grad`` once fixed)."""
    method = methods.methods["mhkd"]
    trained = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.05, momentum=0.9, weight_decay=5e-4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def features(role: str, grad: bool) -> list[torch.Tensor]:
        return [torch.randn(batch, *shape, device=device).contiguous(memory_format=memory_format)
                .requires_grad_(grad) for shape in method.head_inputs[role]]  # fmt: skip

    student_in = features("student", True)
    teacher_in = [] if cached else features("teacher", False)
    methods.train()

    def step() -> None:
        with hardware.autocast(device, precision):
            loss = sum(
                h(x).float().sum() for h, x in zip(method.student_heads, student_in, strict=True)
            )
            with torch.set_grad_enabled(method.head_mode == "joint"):
                teacher = [
                    h(x).float().sum()
                    for h, x in zip(method.teacher_heads, teacher_in, strict=False)
                ]
            if method.head_mode == "joint":
                loss = loss + sum(teacher)
        optimizer.zero_grad(set_to_none=True)
        for x in student_in:
            x.grad = None
        loss.backward()
        optimizer.step()

    return step


def train_macs(methods: MethodSet, teacher_macs: int, student_macs: int, cached: bool) -> int:
    """Multiply-accumulates per image of one step (see the module docstring)."""
    total = 3 * student_macs + (0 if cached else teacher_macs)
    if "mhkd" not in methods.methods:
        return total
    method = methods.methods["mhkd"]
    summary = method.summary()
    total += 3 * summary["student_head_macs"]
    if method.head_mode == "joint":
        first_convs = sum(
            count_macs(head.convs[0], shape)
            for head, shape in zip(method.teacher_heads, method.head_inputs["teacher"], strict=True)
        )
        total += 3 * summary["teacher_head_macs"] - first_convs
    elif not cached:
        total += summary["teacher_head_macs"]  # fixed heads: forward only
    return total


def bench_pair(
    pair: tuple[str, str], args: argparse.Namespace, device: torch.device, precision: str
) -> tuple[list[str], list[str]]:
    """Step rows and MAC rows of one teacher→student pair."""
    channels_last = hardware.resolve_channels_last("auto", device, precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    splits = data.load("synthetic", num_train=args.batch, num_test=16, num_classes=CLASSES)
    images = data.normalize(splits.train.images, splits.mean, splits.std, channels_last)
    batch = Batch(images.to(device), splits.train.labels.to(device),
                  torch.arange(args.batch, device=device))  # fmt: skip
    torch.manual_seed(0)
    teacher = models.create(pair[0], num_classes=CLASSES).to(device, memory_format=memory_format)
    teacher.eval().requires_grad_(False)
    teacher_macs = count_macs(teacher)
    steps: dict[str, Callable[[], None]] = {}
    bounds: dict[str, int] = {}
    heads: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (name, options, cached) in VARIANTS.items():
            torch.manual_seed(0)
            student = models.create(pair[1], num_classes=CLASSES)
            student = student.to(device, memory_format=memory_format)
            ctx = MethodContext(student=student, teacher=teacher, num_classes=CLASSES)
            methods = MethodSet(name, ctx, {name: options} if options else {}).to(device)
            cache = None
            if cached:  # identity views only: a lookup costs the same whatever the views
                root = Path(tmp) / label.replace(" ", "_").replace(",", "")
                outputs = cached_outputs(methods)
                build_cache(
                    root, teacher, splits, device, outputs=outputs, augment=False,
                    precision=precision, channels_last=channels_last, quiet=True,
                )  # fmt: skip
                cache = open_cache(root, teacher, splits, device, outputs=outputs)
            step = make_step(student, teacher, methods, cache, device, precision)
            steps[label] = lambda step=step: step(batch)
            bounds[label] = train_macs(methods, teacher_macs, count_macs(student), cached)
            if "mhkd" in methods.methods:
                heads[label] = methods.methods["mhkd"].summary()
                steps[f"{label}: heads alone"] = make_heads_step(
                    methods, args.batch, device, precision, channels_last, cached
                )
        medians = interleaved_medians(steps, device, args.steps)

    rows = []
    for label, (_, _, cached) in VARIANTS.items():
        seconds = medians[label]
        ratio, bound = seconds / medians["kd"], bounds[label] / bounds["kd"]
        alone = medians.get(f"{label}: heads alone")
        base = medians["kd, cached logits" if cached else "kd"]
        beyond = "— | —" if alone is None else f"{alone:.3f} | {seconds / (base + alone):.2f}"
        rows.append(f"| {pair[0]}→{pair[1]} | {label} | {seconds:.3f} | {args.batch / seconds:.0f}"
                    f" | {ratio:.2f} | {bound:.2f} | {beyond} |")  # fmt: skip
        print(rows[-1], flush=True)
    student_macs = count_macs(models.create(pair[1], num_classes=CLASSES))
    macs = [f"| {pair[0]}→{pair[1]} | {teacher_macs / 1e6:.1f} | {student_macs / 1e6:.1f} | "
            + " | ".join(f"{heads[v]['teacher_head_macs'] / 1e6:.1f} / "
                         f"{heads[v]['student_head_macs'] / 1e6:.1f}"
                         for v in ("mhkd joint", "mhkd joint, stride-1 heads"))
            + " |"]  # fmt: skip
    return rows, macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="auto (bf16 where fast), bf16, fp32")
    parser.add_argument("--pairs", default=",".join(f"{t}:{s}" for t, s in PAIRS),
                        help="teacher:student pairs, comma-separated")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = hardware.default_device()
    precision = hardware.resolve_precision(args.precision, device)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]

    step_rows, mac_rows = [], []
    for pair in pairs:
        rows, macs = bench_pair(pair, args, device, precision)
        step_rows += rows
        mac_rows += macs
    lines = [
        f"Machine: {machine()}. Command: `{command()}`",
        "",
        f"MHKD vs KD train step, batch {args.batch}, {precision}, CIFAR-100 shape (32×32, "
        f"{CLASSES} classes); median of {args.steps} interleaved steps after a warm-up. "
        '"MAC bound": the step\'s multiply-accumulates over the KD step\'s. "heads alone": '
        'the heads\' forward, backward and SGD timed by themselves; "÷ (KD + heads)": the '
        "step over the KD step (cached-logits KD for cached variants) plus the heads alone, "
        "at most 1.10 when mhkd adds at most 10 % beyond the heads' own arithmetic.",
        "",
        "| pair | variant | step (s) | img/s | × KD step | MAC bound × KD | heads alone (s) "
        "| ÷ (KD + heads) |",
        "|---|---|---|---|---|---|---|---|",
        *step_rows,
        "",
        "Forward MMACs per image: networks, and all teacher / all student heads.",
        "",
        "| pair | teacher | student | heads, stride rule (default) | heads, stride 1 |",
        "|---|---|---|---|---|",
        *mac_rows,
    ]
    write_results(lines, args.out)


if __name__ == "__main__":
    main()
