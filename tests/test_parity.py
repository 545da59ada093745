"""mhkd's recipes reproduce figures the reference code computed, without the reference code.

``benchmarks/parity.py --record tests/data/parity`` ran RepDistiller's (and mdistiller's DKD)
training step on weights seeded by mhkd's own code and wrote its numbers here: every weighted
loss term, the student's gradient norm per parameter, the norm of each parameter's (and BN
buffer's) change in one SGD step and the learning-rate schedule. Each test rebuilds mhkd's
side from the same seeds and must land on those numbers: terms within 2e-4 of max(1, |term|)
(float32: CRD sums 131k NCE terms, PKT scales a tiny KL by 30 000), gradient and step norms
within 1e-3 of the largest one (the figures come from another CPU, whose oneDNN kernels put
gradient norms up to 3e-4 apart: ``parity.RECORDED_STEP_TOL``), the lr schedule exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = sorted((ROOT / "tests" / "data" / "parity").glob("*.json"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import parity  # noqa: E402  (benchmarks/parity.py: mhkd's side needs no reference code)


def test_the_recorded_subset_covers_every_feature_method():
    methods = {json.loads(p.read_text())["recipe"].split("/")[1].split("_")[0] for p in FIGURES}
    assert methods >= {"kd", "fitnet", "at", "sp", "cc", "rkd", "pkt", "crd", "dkd", "ce",
                       "vid", "ft"}  # fmt: skip


@pytest.mark.parametrize("path", FIGURES, ids=[p.stem for p in FIGURES])
def test_recipe_step_equals_the_reference_figures(path):
    figures = json.loads(path.read_text())
    ours = parity.seeded_ours(ROOT / "recipes" / figures["recipe"], figures["seed"])
    diff = parity.figure_differences(ours, figures)
    assert diff["keys"] == 0 and diff["lrs"] == 0, diff
    assert diff["terms"] <= parity.TERM_TOL, (diff, ours["terms"], figures["terms"])
    assert diff["grads"] <= parity.RECORDED_STEP_TOL, diff
    assert diff["params"] <= parity.RECORDED_STEP_TOL, diff
