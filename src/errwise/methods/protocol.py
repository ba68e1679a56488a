"""The plug-in point of a continual method: a small Protocol, and the context the loop hands it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from errwise.config import RunConfig
from errwise.data.types import Relation, RelationInstance, Task, TaskStream
from errwise.prompts import Example, plain_example


@dataclass(frozen=True)
class TaskContext:
    """What a method may look at while task `task` is learned. `memory` is the replay memory of the relations
    of earlier tasks (it gains this task's relations after training)."""

    cfg: RunConfig
    stream: TaskStream
    task: Task
    seen: tuple[Relation, ...]
    """Relations of tasks 0..task.index, the candidates of every prediction."""
    memory: dict[str, list[RelationInstance]]
    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    run_dir: Path
    predict: Callable[[Sequence[RelationInstance]], list[str]]
    """Predicts relation ids among `seen` with the current model (class-incremental)."""
    scores: Callable[[Sequence[RelationInstance]], list[list[float]]] | None = None
    """Every relation of `seen`'s exact score (summed label log-probability, as prediction ranks) per instance,
    each label scored in full: slower than `predict`, for methods that need more than the best answer."""

    def relation(self, rel_id: str) -> Relation:
        return self.stream.relation(rel_id)

    def plain(self, inst: RelationInstance, *, kind: str = "plain", weight: float = 1.0) -> Example:
        """The plain instruction for `inst`, answered with its gold relation."""
        cands = list(self.seen) if self.cfg.eval.list_candidates else None
        ex = plain_example(inst, self.relation(inst.relation), cands)
        return Example(ex.prompt, ex.answer, weight, kind, inst.uid)

    def memory_instances(self) -> list[RelationInstance]:
        return [x for rel in self.memory.values() for x in rel]

    def memory_examples(self) -> list[Example]:
        """The memory in the plain instruction: what replay trains on beside the task's data."""
        return [self.plain(x, kind="memory") for x in self.memory_instances()]


class Method(Protocol):
    """A continual method. The loop calls, for each task: begin_task -> training_examples -> (train) ->
    (memory update) -> [consolidation_examples -> (train), when train.consolidate > 0] -> (evaluation) ->
    end_task; every prediction prompt starts with `hints`. Anything a method records goes under ctx.run_dir."""

    def begin_task(self, ctx: TaskContext) -> None: ...

    def training_examples(self, ctx: TaskContext) -> list[Example]: ...

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        """Examples of the consolidation round (train.consolidate > 0), called after the memory update: ctx.memory
        holds every seen relation. [] when the method does not use the memory (its steps go unused)."""
        ...

    def end_task(self, ctx: TaskContext) -> None:
        """After the task's training and evaluation; `ctx.memory` is the memory as the task leaves it."""
        ...

    def held_out(self, ctx: TaskContext) -> dict[str, list[RelationInstance]]:
        """Training instances of ctx.task, per relation, that the method never trains on but the memory must keep
        (counted in memory_per_relation; the rest is selected as usual). {} for none."""
        ...

    def hints(self, instances: Sequence[RelationInstance]) -> list[str] | None:
        """Text put first in each instance's prediction prompt (e.g. retrieved lessons); None for none."""
        ...
