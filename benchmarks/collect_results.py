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

#: (heading, result file), in reading order.
SECTIONS = [
    ("Quickstart on the digits set", "quickstart.md"),
    ("Train step: mhkd against a bare loop (CE, KD)", "speed_ce_kd.md"),
    ("Train step before and after the renovation", "renovation_speed.md"),
    ("Train step per method (KD, MHKD, CRD)", "speed_methods.md"),
    ("channels_last on and off", "speed_layout.md"),
    ("torch.compile on and off", "speed_compile.md"),
    ("Cached teacher targets", "cache.md"),
    ("Streaming loader on ImageNet-size JPEGs", "loader.md"),
    ("MHKD step against the KD step", "mhkd_speed.md"),
    ("Baselines' step against the KD step", "baselines.md"),
    ("Low-label digits: every method against CE", "lowlabel.md"),
    ("Information-flow KD study on digits", "infoflow.md"),
    ("Cascaded channel pruning study on digits", "prune.md"),
    ("Cascaded pruning at keep 0.1 and 0.05 with a 3× longer schedule", "prune_long.md"),
    ("Parity with the reference code", "parity.md"),
]

PREAMBLE = """# Results

Every table below is written by the command it names (seeds included) and collected here by
`python benchmarks/collect_results.py`. Machine for all figures: the project's CPU machine,
2 cores of an Intel Xeon with AMX (bf16 matrix units), 24 GiB, torch 2.13 CPU build. Most were
taken on one thread (`OMP_NUM_THREADS=1`) while another job used the second core, so absolute
images/s are one core's; the ratios compare runners timed side by side in the same process.

**GPU:** no GPU was lent to the session that produced these figures, so there are no GPU
figures yet. `benchmarks/bench_speed.py` runs unchanged on a CUDA machine (data resident on the
GPU, bf16, channels_last); record its output here with the device name when one is measured.
"""


def main() -> None:
    parts = [PREAMBLE]
    for heading, name in SECTIONS:
        path = RESULTS / name
        parts.append(f"## {heading}\n")
        if path.is_file():
            body = path.read_text().strip()
            lines = body.splitlines()
            if lines and lines[0].startswith("# "):  # the file's own title: the heading serves
                body = "\n".join(lines[1:]).strip()
            parts.append(body + "\n")
        else:
            parts.append(f"_Not measured yet_ (`benchmarks/results/{name}` is missing).\n")
        notes = RESULTS / "notes" / name
        if notes.is_file():
            parts.append(notes.read_text().strip() + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
