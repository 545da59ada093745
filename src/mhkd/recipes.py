"""YAML recipes: one file per paper-table entry, run with ``mhkd recipe FILE``.

Keys: ``data``, ``teacher`` (zoo name; its checkpoint comes from ``--teacher``), ``student``,
``method``, ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
``schedule: {kind, milestones, gamma}``, ``options`` (method keyword arguments), ``weights``
(loss-term weight overrides) and ``paper: {top1, source}`` (the number it should reach).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mhkd import checkpoint

KNOWN_KEYS = {
    "data", "teacher", "student", "method", "epochs", "batch_size", "lr", "momentum",
    "weight_decay", "schedule", "options", "weights", "paper", "notes",
}  # fmt: skip


def read_yaml_recipe(
    path: str | Path, known: set[str], required: tuple[str, ...] = (), kind: str = "recipe"
) -> dict[str, Any]:
    """Parse a recipe file; a key outside ``known`` is an error, not silently ignored."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{kind} not found: {path}")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or any(key not in recipe for key in required):
        raise ValueError(f"{path} is not a {kind} (it needs at least {', '.join(required)})")
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {kind} key(s) {', '.join(unknown)}")
    return recipe


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A distillation or training recipe (see the module docstring for its keys)."""
    return read_yaml_recipe(path, KNOWN_KEYS, ("data", "student"))


def recipe_config(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's training settings as TrainConfig keywords (absent ones left out)."""
    schedule = recipe.get("schedule") or {}
    config = {
        "epochs": recipe.get("epochs"),
        "batch_size": recipe.get("batch_size"),
        "lr": recipe.get("lr"),
        "momentum": recipe.get("momentum"),
        "weight_decay": recipe.get("weight_decay"),
        "schedule": schedule.get("kind"),
        "milestones": schedule.get("milestones"),
        "gamma": schedule.get("gamma"),
    }
    return {k: v for k, v in config.items() if v is not None}


def check_teacher(recipe: dict[str, Any], path: str | Path, teacher: str | None) -> None:
    """A distillation recipe needs a teacher checkpoint of the architecture it names."""
    if recipe.get("method", "ce") == "ce":
        return
    if not teacher:
        raise ValueError(
            f"recipe {path} distills from a {recipe.get('teacher')}: pass --teacher CKPT "
            "(train one with the teacher's recipe or mhkd train)"
        )
    arch = (checkpoint.load(teacher).get("arch") or {}).get("name")
    if recipe.get("teacher") and arch and arch != recipe["teacher"]:
        raise ValueError(f"recipe expects a {recipe['teacher']} teacher, {teacher} is a {arch}")
