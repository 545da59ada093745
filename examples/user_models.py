"""Distill your own ``nn.Module`` teacher into your own student, then export it to ONNX.

Nothing here comes from the model zoo: the two networks below are ordinary PyTorch modules with
no mhkd-specific attributes. Methods that read intermediate features (``mhkd``, ``fitnet``,
``at``, ...) are told which layers to tap by name, ``model.named_modules()`` names, paired in
order; ``kd`` reads logits only and ignores them.

    python examples/user_models.py                      # digits, kd, a few minutes on a CPU
    python examples/user_models.py --method mhkd --epochs 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

import mhkd.api
import mhkd.checkpoint
import mhkd.export
import mhkd.methods
from mhkd.data import DataSplits


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class Teacher(nn.Module):
    """A plain three-stage CNN; its stage ends are ``stage1``, ``stage2`` and ``stage3``."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        self.stem = conv_bn(3, width)
        self.stage1 = nn.Sequential(conv_bn(width, width), conv_bn(width, width))
        self.stage2 = nn.Sequential(conv_bn(width, 2 * width, 2), conv_bn(2 * width, 2 * width))
        self.stage3 = nn.Sequential(conv_bn(2 * width, 4 * width, 2), conv_bn(4 * width, 4 * width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))


class Student(nn.Module):
    """A narrower, shallower CNN; its stage ends are ``blocks.0``, ``blocks.1``, ``blocks.2``."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.blocks = nn.Sequential(
            conv_bn(3, width), conv_bn(width, 2 * width, 2), conv_bn(2 * width, 4 * width, 2)
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.blocks(x))


TEACHER_LAYERS = ["stage1", "stage2", "stage3"]
STUDENT_LAYERS = ["blocks.0", "blocks.1", "blocks.2"]


def distill_and_export(
    data: str | DataSplits = "digits",
    method: str = "kd",
    epochs: int = 10,
    out: str | Path = "runs/user-models",
    **settings: Any,
) -> dict[str, Any]:
    """Train the teacher, distill the student with ``method``, export the student to ONNX."""
    out = Path(out)
    splits = mhkd.api.load_data(data)
    teacher = Teacher(splits.num_classes)
    training = {k: v for k, v in settings.items() if k not in ("options", "weights")}
    mhkd.api.train(teacher, splits, out=out / "teacher", epochs=epochs, **training)

    student = Student(splits.num_classes)
    summary = mhkd.api.distill(
        teacher,
        student,
        splits,
        method=method,
        teacher_layers=TEACHER_LAYERS,
        student_layers=STUDENT_LAYERS,
        out=out / method,
        epochs=epochs,
        **settings,
    )
    # best.pt holds the bare student's weights (no heads); a user model loads them itself
    best = mhkd.checkpoint.load(out / method / "checkpoints" / "best.pt")
    student.load_state_dict(best["model"])

    onnx_file = out / method / "student.onnx"
    input_shape = tuple(splits.train.images.shape[1:])
    diff = mhkd.export.to_onnx(student, onnx_file, input_shape)
    latency = mhkd.export.latency(onnx_file, input_shape)
    print(
        f"{method}: student test accuracy {summary['test_acc']:.2f}% "
        f"(best {summary['best_test_acc']:.2f}%), {summary['params'] / 1e6:.3f}M params; "
        f"ONNX {onnx_file} (max abs diff {diff:.1e}), CPU latency batch 1 {latency[1]:.2f} ms, "
        f"batch 64 {latency[64]:.2f} ms"
    )
    return {**summary, "onnx": onnx_file}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--method", default="kd", choices=mhkd.methods.available())
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/user-models")
    args = parser.parse_args(argv)
    distill_and_export(args.data, args.method, args.epochs, args.out, quiet=True)


if __name__ == "__main__":
    main()
