"""Joint training: all training data of every task seen so far. The upper bound (not continual)."""

from __future__ import annotations

from errwise.methods.protocol import TaskContext
from errwise.prompts import Example


class Joint:
    def begin_task(self, ctx: TaskContext) -> None:
        pass

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        return [ctx.plain(x) for t in ctx.stream.tasks[: ctx.task.index + 1] for x in t.train]

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        return ctx.memory_examples()

    def end_task(self, ctx: TaskContext) -> None:
        pass

    def held_out(self, ctx: TaskContext) -> dict:
        return {}

    def hints(self, instances) -> None:
        return None
