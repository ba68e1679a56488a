"""Experiment tracking, the ecosystem's `--report_to` convention: off (`none`) or TensorBoard event files.

The run folder is the record either way (metrics.jsonl); a tracker only mirrors it for live plots. TensorBoard
is an optional extra (`pip install -e '.[tensorboard]'`), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from errwise.errors import ErrwiseError

REPORT_TO = ("none", "tensorboard")


class Tracker:
    """Does nothing (`report_to: none`), and the interface of the others."""

    def step_logger(self, tag: str) -> Callable[[float], None] | None:
        """A callback for train(): the loss of each optimiser step, logged under `tag`; None when off."""
        return None

    def log_task(self, line: dict) -> None:
        """A completed task's metrics.jsonl line: seen accuracy and accuracy row, at step = tasks done."""

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in `<run>/tensorboard/`: `train/loss` and `consolidate/loss` per optimiser step (one step
    counter over the whole run, continued on resume), `eval/seen_accuracy` and `eval/accuracy_task_<j>` per task."""

    def __init__(self, log_dir: Path, first_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ErrwiseError(
                "report_to tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(log_dir))
        self.step = first_step

    def step_logger(self, tag: str) -> Callable[[float], None]:
        def log(loss: float) -> None:
            self.step += 1
            self.writer.add_scalar(tag, loss, self.step)

        return log

    def log_task(self, line: dict) -> None:
        done = line["task"] + 1
        self.writer.add_scalar("eval/seen_accuracy", line["seen_accuracy"], done)
        for j, acc in enumerate(line["accuracy_row"]):
            self.writer.add_scalar(f"eval/accuracy_task_{j + 1}", acc, done)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(report_to: str, run_dir: Path, first_step: int = 0) -> Tracker:
    """The tracker `report_to` names; `first_step`: optimiser steps already taken (a resumed run)."""
    if report_to == "tensorboard":
        return TensorBoardTracker(run_dir / "tensorboard", first_step)
    return Tracker()
