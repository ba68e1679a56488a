"""The registry of continual methods. Adding a method = one file + one line here."""

from __future__ import annotations

from collections.abc import Callable

from errwise.config import MethodConfig
from errwise.errors import ErrwiseError
from errwise.methods.errwise import Errwise
from errwise.methods.finetune import Finetune
from errwise.methods.instructor import Instructor
from errwise.methods.joint import Joint
from errwise.methods.lessons import Lessons
from errwise.methods.protocol import Method, TaskContext
from errwise.methods.replay import Replay

METHODS: dict[str, Callable[[MethodConfig], Method]] = {
    "finetune": lambda cfg: Finetune(),
    "replay": lambda cfg: Replay(),
    "joint": lambda cfg: Joint(),
    "errwise": Errwise,
    "instructor": Instructor,
    "lessons": Lessons,
}


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ErrwiseError(f"unknown method {cfg.name!r}; choose one of {sorted(METHODS)} (--method.name)")
    return METHODS[cfg.name](cfg)


__all__ = ["METHODS", "Method", "TaskContext", "build_method"]
