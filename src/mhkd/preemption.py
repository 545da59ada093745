"""Stop a run cleanly when the cluster asks: SIGTERM, SIGUSR1 (where it exists) and SIGINT.

SLURM and Kubernetes send SIGTERM (SLURM's ``--signal`` often SIGUSR1) some seconds before they
kill a job. Inside ``with StopOnSignal() as stop:`` the first such signal only sets
``stop.requested``; the loop looks at it between steps and at the end of each epoch and raises
:class:`RunInterrupted`, whose message says where it stopped and how to continue, and whose
``exit_code`` is the shell's for that signal (143 SIGTERM, 130 SIGINT, 138 SIGUSR1 on Linux).
A second signal acts as if there were no handler (SIGINT raises ``KeyboardInterrupt``, SIGTERM
kills), so an impatient user or scheduler still gets its way.

What is saved, and why resume stays exact:

* A stop requested **during an epoch** ends the run at the next step boundary without writing a
  checkpoint. ``checkpoints/last.pt`` - written at the end of the previous epoch - stays valid,
  and ``--resume`` replays the interrupted epoch from its start with the same RNG state and
  data order, so the resumed run ends bit-identical to an uninterrupted one (as after kill -9).
  A mid-epoch checkpoint would be exact only if the loader could skip ahead to step S with its
  random state; it cannot, so the partial epoch's work (at most one epoch) is given up instead.
* A stop requested **after the epoch's last step** lets that epoch finish (evaluation, metrics,
  ``last.pt``), then stops at the epoch boundary: nothing is replayed.

Under ``torchrun`` every rank gets the signal, but not necessarily at the same step: check
:meth:`StopOnSignal.requested_anywhere` (a collective: every rank calls it at the same steps)
so that all ranks stop at the same step and none waits forever in an all-reduce.

Outside the main thread (where Python cannot install signal handlers) the context manager does
nothing and ``requested`` stays False.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch

from mhkd import distributed

#: The signals handled by default: what schedulers send before they kill, and Ctrl-C.
DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name)
)


class RunInterrupted(Exception):
    """The run stopped on a signal; ``checkpoints/last.pt`` resumes it.

    ``exit_code`` is 128 + the signal number, what a shell reports for a process the signal
    killed; the CLI prints the message and exits with it.
    """

    def __init__(
        self,
        signum: int,
        epoch: int,
        step: int | None = None,
        *,
        where: str | None = None,
        hint: str = "continue with --resume",
    ):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.epoch = epoch
        self.step = step
        self.exit_code = 128 + signum
        if where is None:
            where = f"at epoch {epoch} step {step}" if step is not None else f"after epoch {epoch}"
        self.where = where
        super().__init__(f"stopped by {self.signal_name} {where}; {hint}")

    def with_hint(self, hint: str) -> RunInterrupted:
        """The same stop, advising ``hint`` (a command without ``--resume`` says what to do)."""
        return RunInterrupted(self.signum, self.epoch, self.step, where=self.where, hint=hint)


class StopOnSignal:
    """Turn the first of ``signals`` into a request to stop; restore the handlers on exit."""

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked this process to stop."""
        return self.signum is not None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            # None: a handler installed outside Python, which cannot be reinstated
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set the flag: printing here could re-enter a write to stderr in progress.
        if self.signum is None:
            self.signum = signum
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # e.g. SIGINT's default: raise KeyboardInterrupt
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def check(self, epoch: int, step: int | None = None) -> None:
        """Raise :class:`RunInterrupted` if a stop was requested.

        ``epoch`` is 1-based as the loop prints it; ``step`` is the number of steps done in
        it, or ``None`` at the epoch boundary (after ``last.pt`` of that epoch was written).
        """
        if self.signum is not None:
            raise RunInterrupted(self.signum, epoch, step)

    def requested_anywhere(self, device: torch.device | str = "cpu") -> bool:
        """Whether any rank was asked to stop; adopts that rank's signal. A collective call.

        In a single process this is :attr:`requested`, without synchronising anything.
        """
        if distributed.world()[1] == 1:
            return self.requested
        received = [float(signum == self.signum) for signum in self.signals]
        counts = distributed.all_reduce_sum(torch.tensor(received, device=device)).tolist()
        if self.signum is None:
            self.signum = next((s for s, n in zip(self.signals, counts, strict=True) if n), None)
        return any(counts)
