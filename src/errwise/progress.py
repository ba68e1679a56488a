"""Progress on long work: a tqdm bar on a terminal; in a log file (stderr not a terminal: a run in the background,
under nohup, in CI) a plain line at most once a minute, so that the log of an hour-long task says where it is."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

EVERY = 60.0
"""Seconds between two progress lines in a log file."""


def progress(iterable: Iterable, *, desc: str, total: int | None = None, leave: bool = True, every: float = EVERY):
    """`iterable`, reporting progress: tqdm's bar on a terminal, else a `LogProgress` line every `every` seconds.
    Both have `set_postfix(**values)`."""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=leave)
    return LogProgress(iterable, desc, total, every)


class LogProgress:
    """Iterates like tqdm and writes `desc: done/total (s each, ~time left, postfix)` to stderr at most once every
    `every` seconds."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, every: float):
        self.iterable, self.desc, self.every = iterable, desc, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix = ""

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.every:
                last = now
                print(self.line(done, now - start), file=sys.stderr, flush=True)

    def line(self, done: int, elapsed: float) -> str:
        each = elapsed / done
        left = f", ~{_duration(each * (self.total - done))} left" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        of = f"/{self.total}" if self.total else ""
        return f"{self.desc}: {done}{of} ({each:.2f} s each{left}{post})"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
