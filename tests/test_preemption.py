"""Signals become a request to stop: flag set, handlers restored, exit codes of the shell."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading

import pytest
import torch.distributed as dist

from mhkd.preemption import RunInterrupted, StopOnSignal


@pytest.mark.parametrize(
    ("name", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 138)]
)
def test_the_first_signal_sets_the_flag_and_the_handlers_come_back(name, exit_code):
    signum = getattr(signal, name)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with StopOnSignal() as stop:
        stop.check(epoch=3, step=7)  # nothing asked yet
        assert not stop.requested
        os.kill(os.getpid(), signum)  # the handler runs before the next bytecode: no race
        assert stop.requested and stop.signum == signum
        with pytest.raises(RunInterrupted) as stopped:
            stop.check(epoch=3, step=7)
    assert {s: signal.getsignal(s) for s in before} == before
    assert stopped.value.exit_code == exit_code
    assert str(stopped.value) == f"stopped by {name} at epoch 3 step 7; continue with --resume"
    boundary = RunInterrupted(signum, epoch=4)
    assert str(boundary) == f"stopped by {name} after epoch 4; continue with --resume"


def test_a_second_signal_does_what_it_did_without_the_handler():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [] and stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM]  # the earlier handler, as if ours were not there
            with pytest.raises(KeyboardInterrupt):  # SIGINT's default handler
                os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGTERM  # the first signal is the one reported
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_it_does_nothing():
    seen = {}

    def worker():
        with StopOnSignal() as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = stop.requested

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"handler": signal.getsignal(signal.SIGTERM), "requested": False}


def _rank_main(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    with StopOnSignal() as stop:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 got the signal
        results.put((rank, stop.requested, stop.requested_anywhere(), stop.signum))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_stops_when_one_was_signalled():
    ctx = multiprocessing.get_context("fork")  # no fresh interpreters: fast
    results, port = ctx.SimpleQueue(), _free_port()
    ranks = [ctx.Process(target=_rank_main, args=(rank, port, results)) for rank in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(30)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    got = sorted(results.get() for _ in range(2))
    assert got == [(0, False, True, signal.SIGUSR1), (1, True, True, signal.SIGUSR1)]


def test_in_one_process_requested_anywhere_is_the_flag():
    with StopOnSignal([signal.SIGUSR1]) as stop:
        assert not stop.requested_anywhere()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested_anywhere()
