"""The registry of continual methods. Adding a method = one file + one line here."""

from __future__ import annotations

from collections.abc import Callable

from errwise.config import RunConfig
from errwise.errors import ErrwiseError
from errwise.methods.errwise import Errwise
from errwise.methods.finetune import Finetune
from errwise.methods.instructor import Instructor
from errwise.methods.joint import Joint
from errwise.methods.lessons import Lessons
from errwise.methods.protocol import Method, TaskContext
from errwise.methods.replay import Replay

# Each builder takes the run's config and passes the method its own section.
METHODS: dict[str, Callable[[RunConfig], Method]] = {
    "finetune": lambda cfg: Finetune(),
    "replay": lambda cfg: Replay(),
    "joint": lambda cfg: Joint(),
    "errwise": lambda cfg: Errwise(cfg.errwise),
    "instructor": lambda cfg: Instructor(cfg.errwise),
    "lessons": lambda cfg: Lessons(cfg.errwise),
}


def build_method(cfg: RunConfig) -> Method:
    """The method `cfg.method.name`, built from its config section."""
    name = cfg.method.name
    if name not in METHODS:
        raise ErrwiseError(f"unknown method {name!r}; choose one of {sorted(METHODS)} (--method.name)")
    return METHODS[name](cfg)


__all__ = ["METHODS", "Method", "TaskContext", "build_method"]
