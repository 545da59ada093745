"""Progress in a log (SLURM, nohup, tee): timed epoch lines, plain lines, no carriage returns."""

from __future__ import annotations

import io
import re

import torch

from mhkd import api
from mhkd.progress import duration
from mhkd.teacher_cache import build_cache

from conftest import TinyNet

DURATION = r"\d+(?:s|m\d\ds|h\d\dm)"
EPOCH_LINE = re.compile(
    rf"^epoch (\d)/3 lr=\S+ ce=\S+ train_acc=\S+ test_acc=\S+ "
    rf"\(\d+ img/s, ({DURATION}) this epoch, ~({DURATION}) left\)$"
)


class Terminal(io.StringIO):
    """Stands for stderr on a terminal."""

    def isatty(self) -> bool:
        return True


def train(data, fast, **settings):
    torch.manual_seed(0)
    return api.train(TinyNet(), data, epochs=3, **{**fast, "quiet": False, **settings})


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0, 42.4, 60, 185, 3599.6, 3720, 90061)] == [
        "0s", "42s", "1m00s", "3m05s", "1h00m", "1h02m", "25h01m",
    ]  # fmt: skip


def test_a_log_gets_every_epoch_timed_and_no_carriage_return(tiny_data, fast, capfd):
    train(tiny_data, fast)
    err = capfd.readouterr().err
    assert "\r" not in err
    epochs = [EPOCH_LINE.match(line) for line in err.splitlines() if line.startswith("epoch ")]
    assert all(epochs), err  # every epoch line carries its time and the time left
    assert [int(m.group(1)) for m in epochs] == [1, 2, 3]
    assert epochs[-1].group(3) == "0s"  # nothing left after the last epoch
    assert not re.search(r"^epoch \d/3: ", err, re.M)  # 60 s never passed: no within-epoch line


def test_a_log_gets_plain_progress_lines_within_an_epoch(tiny_data, fast, capfd, monkeypatch):
    monkeypatch.setattr("mhkd.progress.PLAIN_EVERY", 0.0)
    train(tiny_data, fast)
    err = capfd.readouterr().err
    assert "\r" not in err
    steps = re.findall(rf"^epoch 2/3: (\d)/8 batch \(\d+ %\), {DURATION} so far, ~", err, re.M)
    assert steps == [str(i) for i in range(1, 9)], err  # 256 images in batches of 32


def test_a_terminal_keeps_the_bar_and_quiet_stays_silent(tiny_data, fast, monkeypatch, capfd):
    monkeypatch.setattr("mhkd.progress.PLAIN_EVERY", 0.0)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(tiny_data, fast)
    shown = terminal.getvalue()
    assert "\r" in shown and "batch" in shown  # tqdm redraws its bar in place
    assert not re.search(r"^epoch 1/3: \d/8 batch", shown, re.M)  # no plain lines on a terminal

    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    train(tiny_data, fast, quiet=True)
    assert quiet.getvalue() == "" and capfd.readouterr().err == ""


def test_the_teacher_cache_build_logs_plain_lines(tmp_path, tiny_data, capfd, monkeypatch):
    monkeypatch.setattr("mhkd.progress.PLAIN_EVERY", 0.0)
    torch.manual_seed(0)
    build_cache(tmp_path, TinyNet(), tiny_data, torch.device("cpu"), augment=False, batch_size=128)
    err = capfd.readouterr().err
    assert "\r" not in err
    assert re.findall(r"^teacher cache: (\d+)/256 img", err, re.M) == ["128", "256"], err
