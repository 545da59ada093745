"""Progress that suits where it goes: a tqdm bar on a terminal, plain timed lines in a log.

A bar redraws itself with carriage returns, which a log file (SLURM, nohup, ``tee``) keeps as
one unreadable line; when stderr is not a terminal a plain line is printed instead every
:data:`PLAIN_EVERY` seconds, saying how far the work is and how long it has left.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

#: Seconds between plain progress lines when stderr is not a terminal (tests shrink it).
PLAIN_EVERY = 60.0


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: short enough for a log line, exact enough to plan by."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Count ``total`` units of work under ``desc``; silent when ``quiet``.

    ``total`` is ``None`` when the work's length is unknown: the plain lines then give the count
    and the time so far only.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", quiet: bool = False):
        terminal = sys.stderr.isatty()
        self.desc, self.unit, self.total = desc, unit, total
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
            disable=quiet or not terminal,
        )  # fmt: skip
        self.plain = not quiet and not terminal
        self.done = 0
        self.started = self.printed = time.perf_counter()

    @property
    def shown(self) -> bool:
        """True while a terminal bar is drawn (worth computing figures for its postfix)."""
        return not self.bar.disable

    def note(self, **figures: str) -> None:
        """Figures shown beside the terminal bar (nothing in a log)."""
        if self.shown:
            self.bar.set_postfix(figures)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; in a log, print a plain line once :data:`PLAIN_EVERY` passed."""
        self.done += n
        self.bar.update(n)
        if self.plain and time.perf_counter() - self.printed >= PLAIN_EVERY:
            self.printed = time.perf_counter()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """``desc: 120/500 batch (24 %), 1m02s so far, ~3m16s left``."""
        elapsed = time.perf_counter() - self.started
        if not self.total:
            return f"{self.desc}: {self.done} {self.unit}, {duration(elapsed)} so far"
        left = elapsed / max(1, self.done) * (self.total - self.done)
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} "
            f"({100 * self.done / self.total:.0f} %), {duration(elapsed)} so far, "
            f"~{duration(left)} left"
        )

    def close(self) -> None:
        self.bar.close()
