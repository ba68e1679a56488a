"""Sequential fine-tuning: train on the current task only. The lower bound: it forgets."""

from __future__ import annotations

from errwise.methods.protocol import TaskContext
from errwise.prompts import Example


class Finetune:
    def begin_task(self, ctx: TaskContext) -> None:
        pass

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        return [ctx.plain(x) for x in ctx.task.train]

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        return []  # finetune does not use the memory

    def end_task(self, ctx: TaskContext) -> None:
        pass

    def held_out(self, ctx: TaskContext) -> dict:
        return {}

    def hints(self, instances) -> None:
        return None
