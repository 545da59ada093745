"""YAML recipes: one file per paper-table entry, run with ``mhkd recipe FILE``.

Keys: ``data``, ``teacher`` (zoo name; its checkpoint comes from ``--teacher``), ``student``,
``method``, ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
``schedule: {kind, milestones, gamma}``, ``options`` (method keyword arguments), ``weights``
(loss-term weight overrides) and ``paper: {top1, source}`` (the number it should reach).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from mhkd import api, checkpoint
from mhkd.methods.base import split_options

KNOWN_KEYS = {
    "data", "teacher", "student", "method", "epochs", "batch_size", "lr", "momentum",
    "weight_decay", "schedule", "options", "weights", "paper", "notes",
}  # fmt: skip


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Parse and check a recipe file (unknown keys are errors, not silently ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe not found: {path}")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or "student" not in recipe or "data" not in recipe:
        raise ValueError(f"{path} is not a recipe (it needs at least 'data' and 'student')")
    unknown = sorted(set(recipe) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s) {', '.join(unknown)}")
    return recipe


def run_recipe(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run the recipe in ``args.file``; explicit command-line options override its values."""
    recipe = read_recipe(args.file)
    method = recipe.get("method", "ce")
    schedule = recipe.get("schedule", {})
    config: dict[str, Any] = {
        "epochs": recipe.get("epochs"),
        "batch_size": recipe.get("batch_size"),
        "lr": recipe.get("lr"),
        "momentum": recipe.get("momentum"),
        "weight_decay": recipe.get("weight_decay"),
        "schedule": schedule.get("kind"),
        "milestones": schedule.get("milestones"),
        "gamma": schedule.get("gamma"),
    }
    from mhkd.cli import method_options, parse_weights, training_kwargs

    config = {k: v for k, v in config.items() if v is not None}
    config.update(training_kwargs(args))
    if getattr(args, "schedule", None) and not getattr(args, "milestones", None):
        config.pop("milestones", None)

    teacher = None
    if method != "ce":
        if not args.teacher:
            raise ValueError(
                f"recipe {args.file} distills from a {recipe.get('teacher')}: pass "
                "--teacher CKPT (train one with the teacher's recipe or mhkd train)"
            )
        teacher = args.teacher
        arch = (checkpoint.load(teacher).get("arch") or {}).get("name")
        if recipe.get("teacher") and arch and arch != recipe["teacher"]:
            raise ValueError(f"recipe expects a {recipe['teacher']} teacher, {teacher} is a {arch}")

    options = split_options(method, recipe.get("options") or {}) if method != "ce" else {}
    for name, flags in (method_options(method, args) if method != "ce" else {}).items():
        options.setdefault(name, {}).update(flags)
    data = args.data or recipe["data"]
    seed = config.get("seed", 0)
    out = args.out or f"runs/{Path(args.file).stem}-seed{seed}"
    summary = api.trainer(
        recipe["student"],
        data,
        teacher=teacher,
        method=method,
        out=out,
        data_dir=args.data_dir,
        resume=args.resume,
        teacher_layers=getattr(args, "teacher_layers", None),
        student_layers=getattr(args, "student_layers", None),
        options=options,
        weights={**(recipe.get("weights") or {}), **parse_weights(args.weight)},
        extra_config={"recipe": str(args.file), "paper": recipe.get("paper")},
        **config,
    ).fit()
    return summary, out
