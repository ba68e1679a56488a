"""lessons: errwise plus a memory of lessons retrieved into every prompt (after ReasoningBank, Ouyang et al. 2025).

Before training on a task, errwise mines the initial error and correct cases. The distiller (the instructor,
or the target model itself) turns the most frequent confusions (gold -> predicted) and one group of successes
into short lessons (title, when it applies, content); near-duplicates are dropped and the bank keeps the newest
`max_lessons`. Each prediction prompt, and with `in_training` each training prompt, starts with the `top_k`
lessons most similar to the instance. The bank after each task is `<run>/lessons/task_XX.jsonl`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from errwise import distributed
from errwise.config import ErrwiseConfig, InstructorConfig
from errwise.data.types import Relation, RelationInstance
from errwise.errors import ErrwiseError
from errwise.instructor.client import ChatBackend
from errwise.instructor.generate import make_backend
from errwise.lessons.bank import LessonBank, minilm_embedder, target_embedder
from errwise.methods.errwise import Errwise
from errwise.methods.protocol import TaskContext
from errwise.prompts import Example, lesson_messages, lessons_hint, parse_blocks

CASES_PER_GROUP = 3


def case_groups(
    cases: list[tuple[RelationInstance, str, str]], n: int
) -> list[tuple[list[RelationInstance], str, str | None]]:
    """Up to n groups (instances, gold, wrong): the n-1 most frequent confusions, then the relation with the most
    correct answers (wrong = None); each group keeps its first CASES_PER_GROUP instances."""
    errors: dict[tuple[str, str], list[RelationInstance]] = {}
    right: dict[str, list[RelationInstance]] = {}
    for x, _, pred in cases:
        if pred == x.relation:
            right.setdefault(x.relation, []).append(x)
        else:
            errors.setdefault((x.relation, pred), []).append(x)
    ranked = sorted(errors.items(), key=lambda kv: len(kv[1]), reverse=True)
    out = [(xs[:CASES_PER_GROUP], g, w) for (g, w), xs in ranked[: max(n - 1, 0)]]
    if right and n > 0:
        gold, xs = max(right.items(), key=lambda kv: len(kv[1]))
        out.append((xs[:CASES_PER_GROUP], gold, None))
    return out


def distil(
    backend: ChatBackend,
    ic: InstructorConfig,
    per_group: int,
    groups: list[tuple[list[RelationInstance], str, str | None]],
    relation: Callable[[str], Relation],
    task: int,
) -> tuple[list[dict], int, list[dict]]:
    """Ask the distiller for `per_group` lessons from each case group: the well-formed lessons (a Title and a
    Lesson of at most 400 characters), the number of malformed replies or blocks, and one row per reply."""
    new, malformed, rows = [], 0, []
    for xs, gold, wrong in groups:
        g, w = relation(gold), (relation(wrong) if wrong else None)
        reply = backend.chat(
            lesson_messages(xs, g, w, per_group), temperature=ic.temperature, max_tokens=ic.max_tokens, seed=ic.seed
        )
        blocks = parse_blocks(reply.text, ("Title", "When", "Lesson"))
        good = [b for b in blocks if b.get("Title") and b.get("Lesson") and len(b["Lesson"]) <= 400]
        malformed += len(blocks) - len(good) + (not blocks)
        for b in good[:per_group]:
            new.append(
                {
                    "title": b["Title"],
                    "when": b.get("When", ""),
                    "content": b["Lesson"],
                    "source": "success" if wrong is None else "error",
                    "gold": gold,
                    "wrong": wrong,
                    "task": task,
                    "cases": [x.uid for x in xs],
                }
            )
        rows.append({"gold": gold, "wrong": wrong, "cases": [x.uid for x in xs], "reply": reply.text})
    return new, malformed, rows


def query_text(x: RelationInstance) -> str:
    return f"{x.text} (head: {x.head_text}; tail: {x.tail_text})"


class Lessons:
    hints_at_inference = True
    """Its prompts carry lessons retrieved from the bank of the run's state (`errwise rescore` cannot redo it)."""

    def __init__(self, cfg: ErrwiseConfig):
        self.errwise = Errwise(cfg)
        self.bank: LessonBank | None = None
        self.embedder = None
        self.backend = None
        self.ctx: TaskContext | None = None

    def _setup(self, ctx: TaskContext) -> None:
        lc = ctx.cfg.lessons
        if self.bank is None:
            self.bank = LessonBank(lc.max_lessons, lc.dedup)
            previous = ctx.run_dir / "lessons" / f"task_{ctx.task.index - 1:02d}.jsonl"
            if ctx.task.index > 0 and previous.is_file():  # a resumed run continues with its saved bank
                self.bank.load(previous)
        if self.embedder is None:
            kw = {"batch_size": ctx.cfg.eval.batch_size, "max_length": ctx.cfg.train.max_length}
            self.embedder = minilm_embedder() if lc.embedder == "minilm" else target_embedder(ctx.model, ctx.tok, **kw)
        if self.backend is None:
            target = (ctx.model, ctx.tok) if lc.distiller == "target" else None
            self.backend = make_backend(ctx.cfg.instructor, ctx.run_dir, target=target)

    def begin_task(self, ctx: TaskContext) -> None:
        if distributed.world() > 1:
            raise ErrwiseError(
                "method lessons runs in one process only (instructor calls and files are not shared): "
                "run it without `accelerate launch`"
            )
        self.ctx = ctx
        self._setup(ctx)
        self.errwise.begin_task(ctx)  # initial responses are predicted with the lessons so far
        lc, ic = ctx.cfg.lessons, ctx.cfg.instructor
        t0, before = time.time(), self.backend.stats()
        groups = case_groups(self.errwise.cases, lc.max_groups)
        new, malformed, rows = distil(self.backend, ic, lc.per_group, groups, ctx.relation, ctx.task.index)
        counts = self.bank.add(new, self.embedder)
        out = ctx.run_dir / "lessons"
        out.mkdir(exist_ok=True)
        self.bank.save(out / f"task_{ctx.task.index:02d}.jsonl")
        summary = {
            "distiller": lc.distiller,
            "backend": self.backend.description,
            "groups": len(rows),
            "lessons_parsed": len(new),
            "malformed_replies_or_blocks": malformed,
            **counts,
            "bank_size": len(self.bank.lessons),
            "cost": self.backend.cost_since(before),
            "wall_seconds": time.time() - t0,
            "replies": rows,
        }
        (out / f"task_{ctx.task.index:02d}_summary.json").write_text(json.dumps(summary, indent=1))

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        return self._with_hints(ctx, self.errwise.training_examples(ctx), [x for x, _, _ in self.errwise.cases])

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        return self._with_hints(ctx, self.errwise.consolidation_examples(ctx), ctx.memory_instances())

    def _with_hints(self, ctx: TaskContext, examples: list[Example], instances) -> list[Example]:
        """Train as you predict (--lessons.in_training): the retrieved lessons first in every training prompt."""
        if not ctx.cfg.lessons.in_training:
            return examples
        by_uid = {x.uid: x for x in instances}
        hints = self.hints([by_uid[e.uid] for e in examples])
        return [Example(h + e.prompt, e.answer, e.weight, e.kind, e.uid) for e, h in zip(examples, hints)]

    def end_task(self, ctx: TaskContext) -> None:
        self.errwise.end_task(ctx)

    def held_out(self, ctx: TaskContext):
        return self.errwise.held_out(ctx)

    def hints(self, instances: Sequence[RelationInstance]) -> list[str]:
        """The lessons put first in each instance's prompt."""
        found = self.bank.retrieve([query_text(x) for x in instances], self.ctx.cfg.lessons.top_k, self.embedder)
        return [lessons_hint(ls) for ls in found]
