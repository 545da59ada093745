"""The ``mhkd`` command line: quickstart, train, distill, recipe, eval, models, prune, qat,
report, export.

Training flags are generated from the configuration tree (:mod:`mhkd.config`): one flag per
field, method options namespaced as ``--mhkd.beta``. User errors print one line and exit 2
(``MHKD_DEBUG=1`` shows the traceback); a stop by signal exits 130/143 after saying how to
continue.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mhkd import __version__
from mhkd import config as cfg

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit non-zero (``MHKD_DEBUG=1``: traceback)."""
    from mhkd.preemption import RunInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args) or 0
    except RunInterrupted as stop:
        print(f"mhkd: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        resumable = "; continue with --resume" if hasattr(args, "resume") else ""
        hint = f"; {args.interrupted}" if hasattr(args, "interrupted") else resumable
        print(f"mhkd: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MHKD_DEBUG") or not _is_user_error(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mhkd: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(exc: Exception) -> bool:
    from mhkd.checkpoint import CheckpointError
    from mhkd.data import DataError
    from mhkd.loop import NonFiniteLossError

    return isinstance(
        exc, (ValueError, DataError, CheckpointError, NonFiniteLossError, OSError, KeyError)
    )


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mhkd",
        description="Compress image classifiers by (multi-head) knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"mhkd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_quickstart_command(commands)
    _add_training_commands(commands)
    _add_eval_command(commands)

    zoo = commands.add_parser("models", help="list the zoo with params and MACs")
    zoo.add_argument("--num-classes", type=int,
                     help="classes of every model (default: each model's own: 100 for the "
                     "CIFAR networks, 1000 for the ImageNet ones)")  # fmt: skip
    zoo.set_defaults(run=_run_models)

    from mhkd.export import add_export_command
    from mhkd.report import add_report_command

    add_report_command(commands)
    add_export_command(commands)
    _add_prune_command(commands)
    _add_qat_command(commands)
    return parser


def _add_quickstart_command(commands: argparse._SubParsersAction) -> None:
    quick = commands.add_parser(
        "quickstart",
        help="teacher, then CE, KD and MHKD students on the bundled digits set, in minutes",
        description="Train a small teacher on scikit-learn's digits, then a smaller student "
        "with plain cross-entropy, with KD and with MHKD, and print what distillation bought.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="where the four runs go")
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    quick.add_argument(
        "--overwrite", action="store_true", help="replace runs already in --out (default: refuse)"
    )
    quick.set_defaults(run=_run_quickstart, interrupted="start it again with --overwrite")


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    """train, distill and recipe: one run each, with the generated configuration flags."""
    train = commands.add_parser(
        "train",
        help="train a zoo model with cross-entropy (e.g. a teacher)",
        description="Train a zoo model with cross-entropy.",
    )
    _add_run_flags(train, teacher=False)
    train.set_defaults(run=_run_train)

    distill = commands.add_parser(
        "distill",
        help="distill a trained teacher into a student",
        description="Distill a teacher checkpoint into a zoo student with one method or a sum "
        "of methods (e.g. kd, mhkd, crd+mhkd). Method options are --METHOD.OPTION.",
    )
    _add_run_flags(distill, teacher=True)
    distill.set_defaults(run=_run_distill)

    recipe = commands.add_parser(
        "recipe",
        help="run a YAML recipe (a paper table entry)",
        description="Run a recipe from recipes/; any flag overrides the recipe's value.",
    )
    recipe.add_argument("file", help="recipe YAML file")
    _add_run_flags(recipe, teacher=True)
    recipe.set_defaults(run=_run_recipe)


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval", help="test accuracy of a checkpoint", description="Evaluate a checkpoint."
    )
    evaluate.add_argument("checkpoint", help="a .pt file (mhkd's, or a RepDistiller/mdistiller "
                          "teacher)")  # fmt: skip
    evaluate.add_argument("--arch", help="the checkpoint's architecture when the file does not "
                          "say (foreign checkpoints)")  # fmt: skip
    evaluate.add_argument("--data", help="data set (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="where the data set's files are")
    evaluate.add_argument("--image-size", type=int, help="image side for digits/imagefolder")
    evaluate.add_argument("--batch-size", type=int, default=512)
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    evaluate.add_argument("--workers", type=int, help="decoding processes for streamed data")
    evaluate.add_argument("--retrieval", action="store_true",
                          help="also the retrieval mAP of the penultimate embedding (test "
                          "images as queries against the training set)")  # fmt: skip
    evaluate.set_defaults(run=_run_eval)


def _add_run_flags(parser: argparse.ArgumentParser, teacher: bool) -> None:
    """The run-directory flags and the generated configuration flags of a training command."""
    group = parser.add_argument_group("run directory")
    _add_directory_flags(group, "runs/<command>-<model>-<data>")
    _add_print_config(group)
    if teacher:
        import mhkd.pipelines  # noqa: F401  (pipelines register their sections' flags)

        cfg.add_flags(parser)
    else:
        cfg.add_flags(parser, sections=("data", "models", "optim", "schedule", "runtime"),
                      renames={"models.student": "model"}, methods=False,
                      skip=TEACHER_FIELDS)  # fmt: skip


def _add_directory_flags(group: Any, default_out: str) -> None:
    """``--out``, ``--resume`` and ``--overwrite`` of a command that writes one run."""
    group.add_argument("--out", help=f"run directory (default: {default_out})")
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out (default: refuse)"
    )


def _add_print_config(group: Any) -> None:
    group.add_argument(
        "--print-config", action="store_true",
        help="print the resolved configuration as YAML and exit, creating nothing: what the "
        "run's config.yaml would hold but its run-time facts (a valid recipe)",
    )  # fmt: skip


def _printed(tree: dict[str, Any], args: argparse.Namespace) -> bool:
    """With ``--print-config``: print the tree and say so (the command then stops)."""
    if args.print_config:
        print(cfg.to_yaml(tree), end="")
    return args.print_config


#: Fields that mean nothing without a teacher, left out of ``mhkd train``.
TEACHER_FIELDS = ("models.teacher", "models.teacher_arch", "models.teacher_layers",
                  "models.student_layers", "runtime.teacher_cache", "runtime.teacher_cache_topk",
                  "runtime.teacher_cache_mmap")  # fmt: skip


# ---- commands ----------------------------------------------------------------------------
def _default_out(command: str, config: cfg.RunConfig) -> str:
    model = Path(str(config.models.student)).stem
    label = command if command != "distill" else config.method.replace("+", "-")
    return f"runs/{label}-{model}-{config.data.name}"


def _build(tree: dict[str, Any], where: str = "") -> cfg.RunConfig:
    from mhkd import pipelines

    return pipelines.build_config(tree, where)


def _execute(config: cfg.RunConfig, args: argparse.Namespace, command: str) -> int:
    from mhkd import api

    if _printed(cfg.resolved_tree(config), args):
        return 0
    out = args.out or _default_out(command, config)
    summary = api.run(config, out, resume=args.resume, overwrite=args.overwrite)
    _print_result(summary, out)
    return 0


def _run_train(args: argparse.Namespace) -> int:
    tree = cfg.overrides(args)
    if not tree.get("models", {}).get("student"):
        raise cfg.ConfigError("mhkd train needs --model NAME")
    return _execute(_build(tree), args, "train")


def _run_distill(args: argparse.Namespace) -> int:
    tree = cfg.merge({"method": "kd"}, cfg.overrides(args))
    models = tree.get("models", {})
    if not models.get("student") or not models.get("teacher"):
        raise cfg.ConfigError("mhkd distill needs --teacher CKPT and --student NAME")
    return _execute(_build(tree), args, "distill")


def _run_recipe(args: argparse.Namespace) -> int:
    """A recipe's tree, overridden by every flag that was given."""
    tree, _ = cfg.read_recipe(args.file, cls=None)
    _build(tree, str(args.file))  # the recipe as written is valid, before any flag
    given = cfg.overrides(args)
    if "kind" in given.get("schedule", {}) and "milestones" not in given.get("schedule", {}):
        tree.get("schedule", {}).pop("milestones", None)  # another schedule: not its milestones
    config = _build(cfg.merge(tree, given), str(args.file))
    if not isinstance(config, cfg.RunConfig):
        raise cfg.ConfigError(f"{args.file} is a pruning recipe: mhkd prune --recipe {args.file}")
    if _printed(cfg.resolved_tree(config), args):
        return 0
    teacher = config.models.teacher
    if config.method != "ce" and teacher and not Path(teacher).is_file():
        raise cfg.ConfigError(
            f"recipe {args.file} distills from the teacher checkpoint {teacher}, which is not "
            "there: pass --teacher CKPT (or fetch the RepDistiller teachers into save/models/)"
        )
    if args.out is None:
        args.out = f"runs/{Path(args.file).stem}-seed{config.runtime.seed}"
    return _execute(config, args, "recipe")


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from mhkd import checkpoint, data, retrieval
    from mhkd.loop import evaluate
    from mhkd.pipelines.builder import resolve_device
    from mhkd.pipelines.loading import check_classes

    bounded = (("--image-size", args.image_size, "data.image_size"),
               ("--workers", args.workers, "data.workers"),
               ("--batch-size", args.batch_size, "optim.eval_batch_size"))  # fmt: skip
    for flag, value, path in bounded:
        cfg.check_range(flag, value, *cfg.BOUNDS[path])
    model, meta = checkpoint.load_model(args.checkpoint, arch=args.arch)
    data_name = args.data or meta.get("data")
    if not data_name:
        raise ValueError("the checkpoint does not say its data set; pass --data")
    options = {"image_size": args.image_size} if args.image_size else {}
    splits = data.load(data_name, root=args.data_dir, **options)
    check_classes(model, splits.num_classes, "checkpoint's model")
    device = resolve_device(args.device)
    model = model.to(device).eval()
    _, test_loader = data.make_loaders(
        splits, args.batch_size, device=device, eval_batch_size=args.batch_size,
        workers=args.workers,
    )  # fmt: skip
    with torch.no_grad():
        accuracy = evaluate(model, test_loader, device)
    line = (
        f"{Path(args.checkpoint).name}: test accuracy {accuracy:.2f}% on {splits.name} "
        f"({len(splits.test)} images)"
    )
    if args.retrieval:
        if not getattr(splits, "resident", True):
            raise ValueError("--retrieval needs a data set held in memory (not streamed)")
        database, queries = retrieval.retrieval_loaders(splits, args.batch_size, device)
        score = retrieval.retrieval_map(model, database, queries, device=device)
        line += f", retrieval mAP {score:.2f}% ({len(splits.train)} database images)"
    print(line)
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from mhkd import models
    from mhkd.models.complexity import default_input_shape, profile

    cfg.check_range("--num-classes", args.num_classes, *cfg.NUM_CLASSES)
    print(f"{'model':<16} {'input':>9} {'classes':>7} {'params (M)':>10} {'MMACs':>9}")
    for name in models.available():
        model = models.create(name, num_classes=args.num_classes)
        shape = default_input_shape(model)
        classes = args.num_classes or model.zoo_spec.get("num_classes", "")
        sizes = profile(model, shape)
        print(
            f"{name:<16} {'x'.join(map(str, shape[1:])):>9} {classes:>7} "
            f"{sizes['params'] / 1e6:>10.3f} {sizes['macs'] / 1e6:>9.1f}"
        )
    return 0


def _run_quickstart(args: argparse.Namespace) -> int:
    from mhkd.pipelines.quickstart import quickstart

    quickstart(out=args.out, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite)
    return 0


def _print_result(summary: dict[str, Any], out: str | Path) -> None:
    print(
        f"test accuracy {summary['test_acc']:.2f}% (best {summary['best_test_acc']:.2f}%), "
        f"{summary['params'] / 1e6:.3f}M params, {summary['macs'] / 1e6:.1f} MMACs -> {out}"
    )


# ---- prune --------------------------------------------------------------------------------
def _add_prune_command(commands: argparse._SubParsersAction) -> None:
    from mhkd.pipelines.prune import add_prune_flags

    parser = commands.add_parser(
        "prune",
        help="prune channels under cascaded self-distillation, export a smaller network",
        description="Prune a trained checkpoint to --keep of its channels with a cascade of "
        "teaching assistants sharing its weights (stage 1), fine-tune the exported student "
        "with KD (stage 2). --baseline magnitude|taylor prunes once and fine-tunes with CE. "
        "Flags override a --recipe file, which overrides the defaults.",
    )
    parser.add_argument("--recipe", help="YAML file of settings (see recipes/prune/)")
    _add_directory_flags(parser, "runs/prune-<kind>-<keep>-<data>")
    _add_print_config(parser)
    add_prune_flags(parser)
    parser.set_defaults(run=_run_prune)


def _run_prune(args: argparse.Namespace) -> int:
    from mhkd.pipelines.prune import PruneRunConfig, run_prune

    tree = cfg.read_recipe(args.recipe, PruneRunConfig)[0] if args.recipe else {}
    config = cfg.build(cfg.merge(tree, cfg.overrides(args)), args.recipe or "", PruneRunConfig)
    if _printed(cfg.to_dict(config), args):  # as OUT/stage1/config.yaml holds it
        return 0
    p = config.prune
    kind = p.baseline or f"cascade{p.assistants}"
    out = args.out or f"runs/prune-{kind}-{p.keep}-{config.data.name}"
    summary = run_prune(config, out, resume=args.resume, overwrite=args.overwrite).summary
    print(
        f"test accuracy {summary['test_acc']:.2f}%, params {summary['params_before']} -> "
        f"{summary['params_after']} ({100 * summary['params_kept']:.1f}%), MACs "
        f"{summary['macs_before']} -> {summary['macs_after']} "
        f"({100 * summary['macs_kept']:.1f}%) -> {out}"
    )
    return 0


# ---- quantization-aware distillation -------------------------------------------------------
def _add_qat_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "qat",
        help="fine-tune a distilled student under simulated int8, export float32 and int8 ONNX",
        description="Quantization-aware distillation after a finished run: RUN's best student "
        "is fine-tuned with simulated int8 while RUN's teacher keeps teaching with RUN's "
        "method and weights (a resumable run in --out), then exported as float32 and int8 "
        "ONNX graphs compared on the test split.",
    )
    parser.add_argument("source", metavar="RUN", help="a finished mhkd train/distill run folder")
    parser.add_argument("--out", help="run directory of the stage (default: RUN/qat)")
    parser.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint (default: RUN's)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (cosine)")
    parser.add_argument("--lr", type=float, default=0.005, help="initial learning rate")
    parser.add_argument("--calibration-images", type=int, default=300, metavar="N",
                        help="training images the int8 ranges are calibrated on")  # fmt: skip
    parser.add_argument("--onnx", metavar="FILE", help="float graph (default: OUT/student.onnx; "
                        "the int8 one beside it, .int8.onnx)")  # fmt: skip
    parser.add_argument("--keep-float", default="", metavar="OP[,OP]",
                        help="ONNX operators left in float")  # fmt: skip
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights (default 7, see mhkd export --help)")  # fmt: skip
    parser.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                        help="exit non-zero when int8 is more than this below float32")  # fmt: skip
    parser.add_argument("--no-latency", action="store_true", help="skip the latency timing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue the stage in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a stage (and ONNX files) already there")  # fmt: skip
    parser.set_defaults(run=_run_qat)


def _run_qat(args: argparse.Namespace) -> int:
    from mhkd.export import export_int8, print_int8
    from mhkd.pipelines.qat import qat_config, run_qat
    from mhkd.quantize import check_writable, int8_path

    config = qat_config(args.source, args.epochs, args.lr, args.quiet, args.teacher)
    out = Path(args.out or Path(args.source) / "qat")
    onnx_file = Path(args.onnx or out / "student.onnx")
    for target in (onnx_file, int8_path(onnx_file)):  # refused before training, not after
        check_writable(target, args.overwrite)
    summary = run_qat(config, out, calibration_images=args.calibration_images,
                      reduce_range=not args.full_range, resume=args.resume,
                      overwrite=args.overwrite)  # fmt: skip
    print(f"simulated int8 test accuracy {summary['test_acc']:.2f}% "
          f"(best {summary['best_test_acc']:.2f}%) -> {out}")  # fmt: skip
    report = export_int8(
        out / "checkpoints" / "best.pt", onnx_file,
        calibration_images=args.calibration_images, seed=config.runtime.seed,
        keep_float=[op.strip() for op in args.keep_float.split(",") if op.strip()],
        reduce_range=not args.full_range, overwrite=args.overwrite, timed=not args.no_latency,
    )  # fmt: skip
    return print_int8(report, args.max_drop)


if __name__ == "__main__":
    sys.exit(main())
