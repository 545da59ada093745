"""``mhkd prune``: cascaded channel pruning of a trained checkpoint, or a plain baseline."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from mhkd.prune.run import PruneConfig
from mhkd.recipes import read_yaml_recipe

# flag -> (type, help); defaults come from a --recipe file, then from PruneConfig
_OPTIONS: dict[str, tuple[Any, str]] = {
    "keep": (float, "fraction of channels kept, in (0, 1]"),
    "assistants": (int, "teaching assistants (0: the student learns from the original alone)"),
    "baseline": (str, "magnitude or taylor: prune once, fine-tune with CE (no cascade)"),
    "epochs": (int, "stage-1 epochs"),
    "finetune_epochs": (int, "stage-2 epochs (default: as many as --epochs)"),
    "batch_size": (int, "batch size"),
    "lr": (float, "initial learning rate (cosine decay)"),
    "momentum": (float, "SGD momentum (Nesterov)"),
    "weight_decay": (float, "weight decay"),
    "score_optimizer": (str, "rmsprop or sgd, for the channel scores"),
    "score_lr": (float, "learning rate of the channel scores"),
    "temperature": (float, "KD temperature"),
    "kd_weight": (float, "weight of the KD term"),
    "hint_weight": (float, "weight of hint losses on the last 3 shared layers (0: off)"),
    "seed": (int, "random seed"),
    "precision": (str, "auto, bf16 or fp32"),
    "device": (str, "cpu, cuda, cuda:1 ... (default: cuda if present)"),
}
_DEFAULTS = dataclasses.asdict(PruneConfig())


def add_prune_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prune`` on the ``mhkd`` subcommands; defaults follow the paper's schedule."""
    parser = commands.add_parser(
        "prune",
        help="prune channels under cascaded self-distillation, export a smaller network",
        description="Prune a trained checkpoint to --keep of its channels with a cascade of "
        "teaching assistants sharing its weights (stage 1), fine-tune the exported student "
        "with KD (stage 2). --baseline magnitude|taylor prunes once and fine-tunes with CE. "
        "Flags override a --recipe file, which overrides the defaults.",
    )
    parser.add_argument("--model", required=True, help="trained checkpoint (.pt) or zoo name")
    parser.add_argument("--recipe", help="YAML file of option values (see recipes/prune/)")
    parser.add_argument("--data", help="data set (default: the recipe's, else cifar100)")
    parser.add_argument("--data-dir", help="where the data set's files are")
    for key, (kind, text) in _OPTIONS.items():
        default = _DEFAULTS[key]
        shown = f" (default: {default})" if default is not None else ""
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, help=text + shown)
    parser.add_argument("--out", help="run directory (default: runs/prune-<method>-<keep>-<data>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no epoch lines")
    parser.set_defaults(run=_run_prune)
    return parser


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A prune recipe: ``data`` plus PruneConfig fields; unknown keys are errors."""
    return read_yaml_recipe(path, set(_DEFAULTS) | {"data", "paper", "notes"}, kind="prune recipe")


def _run_prune(args: argparse.Namespace) -> int:
    from mhkd.prune.run import prune

    recipe = read_recipe(args.recipe) if args.recipe else {}
    config = {k: v for k, v in recipe.items() if k in _DEFAULTS}
    config.update({k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None})
    config["quiet"] = args.quiet
    data = args.data or recipe.get("data", "cifar100")
    kind = config.get("baseline") or f"cascade{config.get('assistants', _DEFAULTS['assistants'])}"
    out = args.out or f"runs/prune-{kind}-{config.get('keep', _DEFAULTS['keep'])}-{data}"
    summary = prune(
        args.model, data, out=out, resume=args.resume, data_dir=args.data_dir, **config
    ).summary
    print(
        f"test accuracy {summary['test_acc']:.2f}%, params {summary['params_before']} -> "
        f"{summary['params_after']} ({100 * summary['params_kept']:.1f}%), MACs "
        f"{summary['macs_before']} -> {summary['macs_after']} "
        f"({100 * summary['macs_kept']:.1f}%) -> {out}"
    )
    return 0
