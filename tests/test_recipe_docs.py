"""docs/recipes.md is the generator's output over the recipes, and says what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]
spec = importlib.util.spec_from_file_location("recipe_docs", ROOT / "benchmarks" / "recipe_docs.py")
recipe_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_docs)


def test_committed_page_equals_the_generators_output():
    page = (ROOT / "docs" / "recipes.md").read_text()
    assert page == recipe_docs.render(), "run: python benchmarks/recipe_docs.py"
    rows = [line for line in page.splitlines() if line.startswith("| [`")]
    assert len(rows) == len(list((ROOT / "recipes").glob("*/*.yaml")))


def test_rows_show_what_each_recipe_states(tmp_path: Path):
    (tmp_path / "zeta").mkdir()
    (tmp_path / "zeta" / "kd_pair.yaml").write_text(
        "data: {name: svhn}\n"
        "models: {student: resnet8, teacher: runs/t/checkpoints/best.pt}\n"
        "method: kd\n"
        "paper: {top1: 91.5, source: 'Table 3 | SVHN', reference: train_student.py}\n"
    )
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "teacher.yaml").write_text(
        "models: {student: wrn_40_2}\npaper: {top1: 75.61, source: README}\n"
    )
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / "cut.yaml").write_text(
        "data: {name: digits}\nprune: {keep: 0.3, assistants: 2}\n"
        "paper: {baseline_top1: 93.25, results: 2.5M +0.07}\n"
    )
    (tmp_path / "empty").mkdir()
    page = recipe_docs.render(tmp_path)
    assert page.index("## alpha/") < page.index("## prune/") < page.index("## zeta/")
    assert "## empty/" not in page
    assert (
        "| [`kd_pair.yaml`](../recipes/zeta/kd_pair.yaml) | kd | runs/t/checkpoints/best.pt → "
        "resnet8 | svhn | 91.5 | Table 3 \\| SVHN | train_student.py |" in page
    )
    assert "| ce | wrn_40_2 | cifar100 | 75.61 | README | — |" in page  # defaults resolved
    assert (
        "| prune, keep 0.3, 2 assistants | — | digits | 2.5M +0.07 (from 93.25) | — | — |" in page
    )
