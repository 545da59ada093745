"""Write docs/recipes.md from the recipes: what each runs and the number it promises.

    python benchmarks/recipe_docs.py            # rewrite docs/recipes.md
    python benchmarks/recipe_docs.py --check    # exit 1 if docs/recipes.md is stale

One table per folder of ``recipes/``; one row per recipe: its file, method, teacher and
student, data set, the number it cites (``paper.top1``), where that number was published
(``paper.source``) and the reference file its setting was taken from (``paper.reference``).
Only the recipes are read, so the page cannot say anything they do not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mhkd import pipelines
from mhkd.pipelines.prune import PruneRunConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DOC = ROOT / "docs" / "recipes.md"
MISSING = "—"

HEADER = """# Recipes and the numbers they cite

Generated from `recipes/` by `python benchmarks/recipe_docs.py`; do not edit by hand (a test
checks this page equals the generator's output). Each recipe runs with
`mhkd recipe FILE` (`mhkd prune --recipe FILE` for `prune/`); **cited** is the top-1 accuracy
(%) the source reports for that setting, **source** where it was published, **reference** the
file (code or configuration) the recipe's setting was taken from. {missing} where a recipe
does not say.
"""

COLUMNS = ("recipe", "method", "teacher → student", "data", "cited", "source", "reference")


def cell(value: Any) -> str:
    """A value as one Markdown table cell: ``—`` when absent, pipes escaped, one line."""
    if value is None or value == "":
        return MISSING
    return " ".join(str(value).split()).replace("|", "\\|")


def row(path: Path) -> list[str]:
    """One recipe's cells, in :data:`COLUMNS` order, from the configuration it resolves to."""
    config, notes = pipelines.read_recipe(path)
    paper = notes.get("paper") or {}
    if isinstance(config, PruneRunConfig):
        p = config.prune
        method = f"prune, keep {p.keep}, " + (p.baseline or f"{p.assistants} assistants")
    else:
        method = config.method
    models = config.models
    teacher = models.teacher_arch or models.teacher
    pair = f"{teacher} → {models.student}" if teacher else models.student
    cited = paper.get("top1")
    if cited is None and paper.get("results"):  # pruning papers cite sizes and accuracy changes
        cited = f"{paper['results']} (from {paper.get('baseline_top1', MISSING)})"
    link = f"[`{path.name}`](../recipes/{path.parent.name}/{path.name})"
    return [link, *map(cell, (method, pair, config.data.name, cited, paper.get("source"),
                              paper.get("reference")))]  # fmt: skip


def render(recipes: Path = RECIPES) -> str:
    """The whole page for the recipes under ``recipes`` (one section per folder)."""
    parts = [HEADER.format(missing=MISSING)]
    for folder in sorted(p for p in recipes.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.yaml"))
        if not files:
            continue
        lines = [f"## {folder.name}/", "", "| " + " | ".join(COLUMNS) + " |",
                 "|" + "---|" * len(COLUMNS)]  # fmt: skip
        lines += ["| " + " | ".join(row(path)) + " |" for path in files]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        stale = not DOC.is_file() or DOC.read_text() != page
        if stale:
            print(f"{DOC} is stale: run python benchmarks/recipe_docs.py", file=sys.stderr)
        return int(stale)
    DOC.write_text(page)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
