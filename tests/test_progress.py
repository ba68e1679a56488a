"""Progress in a log file: a plain line at most every `every` seconds, with the count, the rate, the time left and
the postfix; none when the work is shorter than that."""

from __future__ import annotations

from errwise import progress as progress_mod
from errwise.progress import LogProgress, progress


def test_progress_in_a_log_writes_plain_lines_with_time_left(capsys, monkeypatch):
    clock = iter(range(0, 1000, 30))  # each call of time.monotonic() is 30 s later than the one before
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    bar = progress(range(4), desc="T1 train", every=60)  # stderr is captured, not a terminal: log lines
    assert isinstance(bar, LogProgress)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = capsys.readouterr().err.splitlines()
    # start 0; after item 1: 30 s (no line), item 2: 60 s, item 3: 90 s (30 s since), item 4: 120 s
    assert lines == [
        "T1 train: 2/4 (30.00 s each, ~60 s left, loss 0.500)",
        "T1 train: 4/4 (30.00 s each, ~0 s left, loss 0.250)",
    ]
    assert LogProgress(iter("ab"), "x", None, 60).line(1, 200.0) == "x: 1 (200.00 s each)"  # no total: no time left
    assert LogProgress(range(100), "x", None, 60).line(10, 200.0) == "x: 10/100 (20.00 s each, ~30 min left)"


def test_short_work_writes_no_progress_line(capsys):
    assert list(progress(range(3), desc="quick")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
