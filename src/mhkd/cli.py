"""The ``mhkd`` command line: train, distill, eval, models, quickstart, recipe."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mhkd import __version__
from mhkd.methods.base import split_options

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit non-zero (``MHKD_DEBUG=1``: traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("mhkd: interrupted; continue with --resume", file=sys.stderr)
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
    from mhkd.train import NonFiniteLossError

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

    quick = commands.add_parser(
        "quickstart",
        help="teacher, CE student and KD student on the bundled digits set, in minutes",
        description="Train a small teacher on scikit-learn's digits, then a smaller student "
        "with plain cross-entropy and with KD, and print what distillation bought.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="where the three runs go")
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    quick.set_defaults(run=_run_quickstart)

    train = commands.add_parser(
        "train",
        help="train a zoo model with cross-entropy (e.g. a teacher)",
        description="Train a zoo model with cross-entropy.",
    )
    train.add_argument("--model", required=True, help="zoo model name (see `mhkd models`)")
    _add_training_options(train)
    train.set_defaults(run=_run_train)

    distill = commands.add_parser(
        "distill",
        help="distill a trained teacher into a student",
        description="Distill a teacher checkpoint into a zoo student with one method or a sum "
        "of methods (e.g. kd, mhkd, crd+mhkd).",
        conflict_handler="resolve",
    )
    distill.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    distill.add_argument("--student", required=True, help="zoo model name of the student")
    distill.add_argument("--method", default="kd", help="method or sum of methods (default: kd)")
    _add_training_options(distill)
    _add_method_options(distill)
    distill.set_defaults(run=_run_distill)

    evaluate = commands.add_parser(
        "eval", help="test accuracy of a checkpoint", description="Evaluate a checkpoint."
    )
    evaluate.add_argument("checkpoint", help="a .pt file written by mhkd")
    evaluate.add_argument("--data", help="data set (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="where the data set's files are")
    evaluate.add_argument("--batch-size", type=int, default=512)
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    evaluate.set_defaults(run=_run_eval)

    zoo = commands.add_parser("models", help="list the zoo with params and MACs")
    zoo.add_argument("--num-classes", type=int, default=100)
    zoo.set_defaults(run=_run_models)

    recipe = commands.add_parser(
        "recipe",
        help="run a YAML recipe (a paper table entry)",
        description="Run a recipe from recipes/; command-line options override its values.",
        conflict_handler="resolve",
    )
    recipe.add_argument("file", help="recipe YAML file")
    recipe.add_argument("--teacher", help="teacher checkpoint (for distillation recipes)")
    _add_training_options(recipe, defaults=False)
    _add_method_options(recipe)
    recipe.set_defaults(run=_run_recipe)

    from mhkd.export import add_export_command
    from mhkd.report import add_report_command

    add_report_command(commands)
    add_export_command(commands)

    from mhkd.prune.cli import add_prune_command

    add_prune_command(commands)
    return parser


def _add_training_options(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Options shared by every command that trains. Defaults follow the CIFAR paper recipe."""

    def default(value: Any) -> Any:
        return value if defaults else None

    group = parser.add_argument_group("training")
    group.add_argument("--data", default=default("cifar100"), help="data set (default: cifar100)")
    group.add_argument("--data-dir", help="where the data set's files are (or are downloaded)")
    group.add_argument("--epochs", type=int, default=default(240))
    group.add_argument("--batch-size", type=int, default=default(64))
    group.add_argument("--lr", type=float, default=default(0.05), help="initial learning rate")
    group.add_argument("--momentum", type=float, default=default(0.9))
    group.add_argument("--weight-decay", type=float, default=default(5e-4))
    group.add_argument("--schedule", choices=("multistep", "cosine"), default=default("multistep"))
    group.add_argument(
        "--milestones",
        type=_int_list,
        help="epochs at which the lr drops x0.1 (default: 62.5/75/87.5%% of --epochs)",
    )
    group.add_argument("--seed", type=int, default=default(0))
    group.add_argument("--out", help="run directory (default: runs/<command>-<model>)")
    group.add_argument("--resume", action="store_true", help="continue the run in --out")
    group.add_argument(
        "--overwrite", action="store_true", help="replace a run already in --out (default: refuse)"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    group.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=default("auto"),
        help="auto: bf16 autocast where the hardware runs it fast, else fp32",
    )
    group.add_argument("--channels-last", choices=("auto", "on", "off"), default=default("auto"))
    group.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    group.add_argument(
        "--tensorboard", action="store_true", help="also log every epoch to OUT/tensorboard/"
    )
    group.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="train without random crop and flip",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the models (pays off on long runs; minutes of compiling first)",
    )


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options common to distillation methods, plus each method's own flags."""
    from mhkd.methods.base import registered

    group = parser.add_argument_group("methods")
    group.add_argument("--teacher-layers", type=_str_list, help="teacher layer names, a,b,c")
    group.add_argument("--student-layers", type=_str_list, help="student layer names, a,b,c")
    group.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="TERM=W",
        help="weight of a loss term, e.g. --weight kd=0.9 (repeatable)",
    )
    group.add_argument(
        "--teacher-cache",
        metavar="DIR",
        help="serve the teacher's logits from DIR (built there on first use) instead of "
        "running the teacher: exact per augmentation view; for kd and dkd",
    )
    group.add_argument(
        "--teacher-cache-topk", type=int, metavar="K", help="keep only the top K logits"
    )
    group.add_argument(
        "--teacher-cache-mmap",
        action="store_true",
        default=None,
        help="read the cache from disk instead of holding it in memory",
    )
    for cls in registered():
        add = getattr(cls, "add_arguments", None)
        if add is not None:
            add(group)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,3, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_weights(items: Sequence[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--weight expects TERM=NUMBER, got {item!r}")
    return weights


def method_options(spec: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Keyword arguments for each method in ``spec`` from the method flags that were given."""
    from mhkd.methods.base import expand, method_class

    given = {}
    for name in expand(spec):
        for key in inspect.signature(method_class(name).__init__).parameters:
            if key not in ("self", "ctx") and getattr(args, key, None) is not None:
                given[key] = getattr(args, key)
    return split_options(spec, given)


def training_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings that were given (recipes take these over their own values)."""
    keys = [
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "schedule",
        "milestones",
        "seed",
        "precision",
        "channels_last",
        "device",
        "quiet",
        "teacher_cache",
        "teacher_cache_topk",
        "teacher_cache_mmap",
        "compile",
        "augment",
        "tensorboard",
        "overwrite",
    ]
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


# ---- commands ----------------------------------------------------------------------------
def _run_train(args: argparse.Namespace) -> int:
    from mhkd import api

    out = args.out or f"runs/train-{args.model}-{args.data}"
    summary = api.trainer(
        args.model,
        args.data,
        out=out,
        data_dir=args.data_dir,
        resume=args.resume,
        **training_kwargs(args),
    ).fit()
    _print_result(summary, out)
    return 0


def _run_distill(args: argparse.Namespace) -> int:
    from mhkd import api

    out = args.out or f"runs/{args.method}-{args.student}-{args.data}"
    summary = api.trainer(
        args.student,
        args.data,
        teacher=args.teacher,
        method=args.method,
        out=out,
        data_dir=args.data_dir,
        resume=args.resume,
        teacher_layers=args.teacher_layers,
        student_layers=args.student_layers,
        options=method_options(args.method, args),
        weights=parse_weights(args.weight),
        **training_kwargs(args),
    ).fit()
    _print_result(summary, out)
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from mhkd import api, checkpoint, hardware
    from mhkd.data import make_loaders
    from mhkd.train import check_classes, evaluate

    state = checkpoint.load(args.checkpoint)
    model = checkpoint.build_model(state, args.checkpoint)
    data_name = args.data or state.get("data")
    if not data_name:
        raise ValueError("the checkpoint does not say its data set; pass --data")
    splits = api.load_data(data_name, args.data_dir)
    check_classes(model, splits.num_classes, "checkpoint's model")
    device = torch.device(args.device) if args.device else hardware.default_device()
    _, test_loader = make_loaders(
        splits, args.batch_size, device=device, eval_batch_size=args.batch_size
    )
    accuracy = evaluate(model.to(device), test_loader, device)
    print(
        f"{Path(args.checkpoint).name}: test accuracy {accuracy:.2f}% on {splits.name} "
        f"({len(splits.test.labels)} images)"
    )
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from mhkd import models
    from mhkd.models.complexity import profile

    print(f"{'model':<14} {'params (M)':>10} {'MMACs':>9}")
    for name in models.available():
        sizes = profile(models.create(name, num_classes=args.num_classes))
        print(f"{name:<14} {sizes['params'] / 1e6:>10.3f} {sizes['macs'] / 1e6:>9.1f}")
    return 0


def _run_quickstart(args: argparse.Namespace) -> int:
    from mhkd.quickstart import quickstart

    quickstart(out=args.out, seed=args.seed, quiet=args.quiet)
    return 0


def _run_recipe(args: argparse.Namespace) -> int:
    """A recipe's values, overridden by every training flag or method flag that was given."""
    from mhkd import api, recipes

    recipe = recipes.read_recipe(args.file)
    recipes.check_teacher(recipe, args.file, args.teacher)
    method = recipe.get("method", "ce")
    config = {**recipes.recipe_config(recipe), **training_kwargs(args)}
    if args.schedule and not args.milestones:  # another schedule: not the recipe's milestones
        config.pop("milestones", None)
    options: dict[str, dict[str, Any]] = {}
    if method != "ce":
        options = split_options(method, recipe.get("options") or {})
        for name, flags in method_options(method, args).items():
            options.setdefault(name, {}).update(flags)
    out = args.out or f"runs/{Path(args.file).stem}-seed{config.get('seed', 0)}"
    summary = api.trainer(
        recipe["student"],
        args.data or recipe["data"],
        teacher=args.teacher if method != "ce" else None,
        method=method,
        out=out,
        data_dir=args.data_dir,
        resume=args.resume,
        teacher_layers=args.teacher_layers,
        student_layers=args.student_layers,
        options=options,
        weights={**(recipe.get("weights") or {}), **parse_weights(args.weight)},
        extra_config={"recipe": str(args.file), "paper": recipe.get("paper")},
        **config,
    ).fit()
    _print_result(summary, out)
    return 0


def _print_result(summary: dict[str, Any], out: str | Path) -> None:
    print(
        f"test accuracy {summary['test_acc']:.2f}% (best {summary['best_test_acc']:.2f}%), "
        f"{summary['params'] / 1e6:.3f}M params, {summary['macs'] / 1e6:.1f} MMACs -> {out}"
    )


if __name__ == "__main__":
    sys.exit(main())
