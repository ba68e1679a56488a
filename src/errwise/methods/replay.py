"""Experience replay: the current task's data plus the replay memory of earlier relations."""

from __future__ import annotations

from errwise.methods.protocol import TaskContext
from errwise.prompts import Example


class Replay:
    def begin_task(self, ctx: TaskContext) -> None:
        pass

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        return [ctx.plain(x) for x in ctx.task.train] + ctx.memory_examples()

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        return ctx.memory_examples()

    def end_task(self, ctx: TaskContext) -> None:
        pass

    def held_out(self, ctx: TaskContext) -> dict:
        return {}

    def hints(self, instances) -> None:
        return None
