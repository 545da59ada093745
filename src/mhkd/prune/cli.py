"""``mhkd prune``: cascaded channel pruning of a trained checkpoint, or a plain baseline."""

from __future__ import annotations

import argparse
from typing import Any

from mhkd.prune.run import PruneConfig

_DEFAULTS = PruneConfig()


def add_prune_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prune`` on the ``mhkd`` subcommands; defaults follow the paper's schedule."""
    parser = commands.add_parser(
        "prune",
        help="prune channels under cascaded self-distillation, export a smaller network",
        description="Prune a trained checkpoint to --keep of its channels with a cascade of "
        "teaching assistants sharing its weights (stage 1), fine-tune the exported student "
        "with KD (stage 2). --baseline magnitude|taylor prunes once and fine-tunes with CE.",
    )
    parser.add_argument("--model", required=True, help="trained checkpoint (.pt) or zoo name")
    parser.add_argument(
        "--keep", type=float, default=_DEFAULTS.keep, help="fraction of channels kept, in (0, 1]"
    )
    parser.add_argument(
        "--assistants", type=int, default=_DEFAULTS.assistants, help="teaching assistants (0: none)"
    )
    parser.add_argument(
        "--baseline", choices=("magnitude", "taylor"), help="plain prune + fine-tune"
    )
    parser.add_argument("--data", default="cifar100", help="data set (default: cifar100)")
    parser.add_argument("--data-dir", help="where the data set's files are")
    parser.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help="stage-1 epochs")
    parser.add_argument(
        "--finetune-epochs", type=int, help="stage-2 epochs (default: as many as --epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="initial lr, cosine decay")
    parser.add_argument("--momentum", type=float, default=_DEFAULTS.momentum)
    parser.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay)
    parser.add_argument("--score-optimizer", choices=("rmsprop", "sgd"), default="rmsprop")
    parser.add_argument("--score-lr", type=float, default=_DEFAULTS.score_lr)
    parser.add_argument("--temperature", type=float, default=_DEFAULTS.temperature)
    parser.add_argument("--kd-weight", type=float, default=_DEFAULTS.kd_weight)
    parser.add_argument(
        "--hint-weight", type=float, default=_DEFAULTS.hint_weight, help="0 = no hints (default)"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--out", help="run directory (default: runs/prune-<keep>-<data>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no epoch lines")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.set_defaults(run=_run_prune)
    return parser


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = [
        "keep", "assistants", "baseline", "epochs", "finetune_epochs", "batch_size", "lr",
        "momentum", "weight_decay", "score_optimizer", "score_lr", "temperature", "kd_weight",
        "hint_weight", "seed", "quiet", "precision", "device",
    ]  # fmt: skip
    return {key: getattr(args, key) for key in keys}


def _run_prune(args: argparse.Namespace) -> int:
    from mhkd.prune.run import prune

    kind = args.baseline or f"cascade{args.assistants}"
    out = args.out or f"runs/prune-{kind}-{args.keep}-{args.data}"
    summary = prune(
        args.model, args.data, out=out, resume=args.resume, data_dir=args.data_dir, **_config(args)
    ).summary
    print(
        f"test accuracy {summary['test_acc']:.2f}%, params {summary['params_before']} -> "
        f"{summary['params_after']} ({100 * summary['params_kept']:.1f}%), MACs "
        f"{summary['macs_before']} -> {summary['macs_after']} "
        f"({100 * summary['macs_kept']:.1f}%) -> {out}"
    )
    return 0
