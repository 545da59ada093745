"""Assemble benchmarks/RESULTS.md from the per-topic result files each benchmark writes.

    python benchmarks/collect_results.py

Every table in RESULTS.md is a file under ``benchmarks/results/`` written by the command it
names; this script only orders them under headings, so RESULTS.md never holds a hand-typed
figure. Reading notes, where a result needs one, live in ``benchmarks/results/notes/``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"

#: (heading, result files), in reading order. A table measured on both CPU kinds has one file
#: per kind: ``NAME.md`` from the Intel Xeon with AMX, ``NAME_epyc.md`` from the AVX2-only
#: AMD EPYC (fp32 only: without bf16 units bf16 is emulated and slower).
SECTIONS = [
    ("Quickstart on the digits set", ("quickstart_epyc.md", "quickstart.md")),
    ("Train step: mhkd against a bare loop (CE, KD)", ("speed_ce_kd.md", "speed_ce_kd_epyc.md")),
    ("Train step before and after the renovation", ("renovation_speed.md",)),
    (
        "CRD step before and after the renovation: the cause",
        (
            "crd_renovation/ops_wrn_fp32.md",
            "crd_renovation/ops_wrn_bf16.md",
            "crd_renovation/rounds_wrn_fp32.md",
            "crd_renovation/rounds_resnet_fp32.md",
        ),
    ),
    ("Train step before and after the run builder", ("builder_speed.md", "builder_speed_mhkd.md")),
    ("Train step per method (KD, MHKD, CRD)", ("speed_methods.md",)),
    ("channels_last on and off", ("speed_layout.md", "speed_layout_epyc.md")),
    ("torch.compile on and off", ("speed_compile.md",)),
    ("Cached teacher targets", ("cache.md", "cache_epyc.md")),
    ("Streaming loader on ImageNet-size JPEGs", ("loader.md", "loader_epyc.md")),
    ("MHKD step against the KD step", ("mhkd_speed.md", "mhkd_speed_epyc.md")),
    ("Baselines' step against the KD step", ("baselines.md",)),
    ("The remaining baselines' step against the KD step (contended)", ("baselines_field.md",)),
    ("Low-label digits: every method against CE", ("lowlabel.md",)),
    ("Information-flow KD study on digits", ("infoflow.md",)),
    ("Cascaded channel pruning study on digits", ("prune.md",)),
    ("Cascaded pruning at keep 0.1 and 0.05 with a 3× longer schedule", ("prune_long.md",)),
    ("Parity with the reference code", ("parity.md",)),
    ("int8 on digits: PTQ and quantization-aware KD", ("int8_epyc.md",)),
]

PREAMBLE = """# Results

Every table below is written by the command it names (seeds included) and collected here by
`python benchmarks/collect_results.py`. Two kinds of CPU machine, each 2 cores, 24 GiB, torch
2.13 CPU build: an Intel Xeon with AMX (bf16 matrix units; every table without a machine
suffix) and an AMD EPYC with AVX2 only, no bf16 units, like most laptops (the tables whose
Machine line names it). Most figures were taken on one thread (`OMP_NUM_THREADS=1`), so
absolute images/s are one core's; the ratios compare runners timed side by side in the same
process. The AMD EPYC figures were taken while other jobs shared its two cores ("contended"):
its ratios hold, its absolute images/s and seconds are lower than an idle machine's. One
table (the run builder's speed) comes from a third machine, an AMD EPYC with AVX-512 and
avx512_bf16, as its Machine line and notes say.

**GPU:** no GPU was lent to the session that produced these figures, so there are no GPU
figures yet. `benchmarks/bench_speed.py` runs unchanged on a CUDA machine (data resident on the
GPU, bf16, channels_last); record its output here with the device name when one is measured.
"""


def main() -> None:
    parts = [PREAMBLE]
    for heading, names in SECTIONS:
        parts.append(f"## {heading}\n")
        for name in names:
            parts.extend(section(name))
    (HERE / "RESULTS.md").write_text("\n".join(parts))


def section(name: str) -> list[str]:
    """One result file's table (its own title dropped: the heading serves) and its notes."""
    path = RESULTS / name
    if path.is_file():
        lines = path.read_text().strip().splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        parts = ["\n".join(lines).strip() + "\n"]
    else:
        parts = [f"_Not measured yet_ (`benchmarks/results/{name}` is missing).\n"]
    notes = RESULTS / "notes" / name
    if notes.is_file():
        parts.append(notes.read_text().strip() + "\n")
    return parts


if __name__ == "__main__":
    main()
