"""instructor: errwise plus training data written by an instructor LLM from the target's error cases.

After "LLMs-as-Instructors" (Ying et al., EMNLP Findings 2024). The error cases errwise mines before training
(initial responses on the task's training data and the memory) go to the instructor, the most frequent
confusions first. LE: the instructor sees the error (sentence, head, tail, gold, the wrong answer, both
relations' descriptions) and writes `per_error` new instances of the gold relation that exercise the missed
distinction. LEC: it also sees the `contrast_k` most similar instances the target got right (cosine of the
target's hidden states). Validated instances join the task's training data as plain examples; every block,
accepted or rejected (with the reason), and the instructor's cost are written under `<run>/instructor/`.
With `instructor.errors_from` consolidation (or both), the errors of the consolidation round go to it (or go too):
the memory answered after the new task displaced old relations, so it writes instances of the forgotten
relations, and they join that round's data.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from errwise import distributed
from errwise.config import ErrwiseConfig, InstructorConfig
from errwise.data.types import Relation, RelationInstance
from errwise.errors import ErrwiseError
from errwise.evaluate import embed
from errwise.instructor.client import ChatBackend
from errwise.instructor.generate import BLOCK_KEYS, Verdict, make_backend, normalise, validate
from errwise.lessons.bank import unit_rows
from errwise.methods.errwise import Errwise
from errwise.methods.protocol import TaskContext
from errwise.prompts import (
    VERIFY_NONE,
    Example,
    instructor_messages,
    parse_blocks,
    parse_choice,
    parse_yes,
    statement_messages,
    verify_messages,
)


def pick_errors(cases: list[tuple[RelationInstance, str]], n: int) -> list[tuple[RelationInstance, str]]:
    """Up to n error cases (instance, wrong relation id), one per confusion in turn, most frequent first."""
    groups: dict[tuple[str, str], list[tuple[RelationInstance, str]]] = {}
    for x, pred in cases:
        groups.setdefault((x.relation, pred), []).append((x, pred))
    ranked = sorted(groups.values(), key=len, reverse=True)
    out: list[tuple[RelationInstance, str]] = []
    for depth in range(max((len(g) for g in ranked), default=0)):
        out += [g[depth] for g in ranked if depth < len(g)]
    return out[:n]


def most_similar(query: np.ndarray, pool: np.ndarray, k: int) -> list[int]:
    """Indices of the k rows of `pool` with the highest cosine similarity to each `query` row, (Q, k)."""
    return np.argsort(-(unit_rows(query) @ unit_rows(pool).T), axis=1)[:, :k].tolist()


def contrast_cases(
    model, tok, chosen: list[RelationInstance], right: list[RelationInstance], k: int, **kw
) -> list[list[int]]:
    """For each chosen error case, the indices of the k `right` instances most similar to it (cosine of the
    target's hidden states; `kw`: batch_size, max_length of `evaluate.embed`)."""
    if not right or k == 0:
        return [[] for _ in chosen]
    feats = embed(model, tok, [*chosen, *right], **kw)
    return most_similar(feats[: len(chosen)], feats[len(chosen) :], k)


Request = tuple[RelationInstance, Relation, Relation, list[tuple[RelationInstance, Relation]]]
"""(error case, gold relation, wrong answer, similar correctly answered cases with their relations; [] for LE)."""


def error_requests(
    chosen: list[tuple[RelationInstance, str]],
    right: list[RelationInstance],
    neighbours: list[list[int]],
    relation: Callable[[str], Relation],
) -> list[Request]:
    """The requests for the chosen (error case, wrong relation id) pairs, with their similar right answers."""
    return [
        (x, relation(x.relation), relation(pred), [(right[i], relation(right[i].relation)) for i in ns])
        for (x, pred), ns in zip(chosen, neighbours)
    ]


def plan_requests(model, tok, cases, ic: InstructorConfig, relation: Callable[[str], Relation], **kw) -> list[Request]:
    """The requests for one round's initial responses `cases` ((instance, source, predicted relation id)): up to
    `ic.max_errors` error cases, most frequent confusions first, each with (LEC) its `ic.contrast_k` most similar
    right answers (`kw`: batch_size, max_length of `evaluate.embed`). [] when there is no error case."""
    chosen = pick_errors([(x, p) for x, _, p in cases if p != x.relation], ic.max_errors)
    if not chosen:
        return []
    right = [x for x, _, p in cases if p == x.relation]
    k = ic.contrast_k if ic.mode == "lec" else 0
    neighbours = contrast_cases(model, tok, [x for x, _ in chosen], right, k, **kw)
    return error_requests(chosen, right, neighbours, relation)


def request_messages(request: Request, ic: InstructorConfig) -> list[dict[str, str]]:
    x, gold, wrong, correct = request
    return instructor_messages(x, gold, wrong, ic.per_error, correct, ic.rationale)


def meaning_check(backend: ChatBackend, ic: InstructorConfig, inst: RelationInstance, gold: Relation, wrong: Relation):
    """The instructor's check of a generated instance of `gold` (`ic.verify`): None if it passes, else what the
    instructor answered. `choice`: which of gold, wrong (in an order fixed by the instance, so position bias does
    not favour gold) and "none / swapped" it states; `statement`: yes or no to "the gold of head is tail"."""
    if ic.verify == "statement":
        reply = backend.chat(statement_messages(inst, gold), temperature=0.0, max_tokens=4, seed=ic.seed)
        yes = parse_yes(reply.text)
        return None if yes else ("no" if yes is False else f"no yes/no in {reply.text.strip()[:40]!r}")
    options = sorted([gold, wrong], key=lambda r: hashlib.sha1(f"{inst.uid}|{r.id}".encode()).hexdigest())
    reply = backend.chat(verify_messages(inst, options), temperature=0.0, max_tokens=8, seed=ic.seed)
    choice = parse_choice(reply.text, len(options) + 1)
    if choice is not None and choice < len(options) and options[choice].id == gold.id:
        return None
    if choice is None:
        return f"no letter in {reply.text.strip()[:40]!r}"
    return options[choice].name if choice < len(options) else VERIFY_NONE


def ask_instructor(
    backend: ChatBackend,
    ic: InstructorConfig,
    requests: list[Request],
    known: dict[str, Relation],
    taken: set[str],
    uid_prefix: str,
) -> tuple[list[RelationInstance], list[dict]]:
    """Send each error case to the instructor and validate the first `per_error` blocks of each reply (with
    `ic.verify`, a block that passes is also checked for meaning, `meaning_check`): the accepted instances, and one
    row per block (accepted, or rejected with the reason) for the run folder."""
    generated, rows = [], []
    for request in requests:
        x, gold, wrong, correct = request
        reply = backend.chat(
            request_messages(request, ic), temperature=ic.temperature, max_tokens=ic.max_tokens, seed=ic.seed
        )
        blocks = parse_blocks(reply.text, BLOCK_KEYS)
        for block in blocks[: ic.per_error] or [{"reply": reply.text}]:
            v = validate(block, gold, known, taken, f"{uid_prefix}/{x.uid}")
            answered = None
            if v.instance is not None and ic.verify != "none":
                answered = meaning_check(backend, ic, v.instance, gold, wrong)
                if answered is not None:
                    v = Verdict(None, "meaning check")
            if v.instance is not None:
                generated.append(v.instance)
            rows.append(
                {
                    "error_uid": x.uid,
                    "gold": gold.id,
                    "pred": wrong.id,
                    "mode": ic.mode,
                    "contrast_uids": [c.uid for c, _ in correct],
                    "status": "accepted" if v.instance else "rejected",
                    "reason": v.reason,
                    "uid": v.instance.uid if v.instance else None,
                    "block": block,
                    **({"check_answered": answered} if answered is not None else {}),
                }
            )
    return generated, rows


class Instructor:
    def __init__(self, cfg: ErrwiseConfig):
        self.errwise = Errwise(cfg)
        self.backend = None  # built on first use (a local instructor loads a model)
        self.generated: list[RelationInstance] = []

    def begin_task(self, ctx: TaskContext) -> None:
        if distributed.world() > 1:
            raise ErrwiseError(
                "method instructor runs in one process only (instructor calls and files are not shared): "
                "run it without `accelerate launch`"
            )
        self.errwise.begin_task(ctx)
        self.generated = []
        if ctx.cfg.instructor.errors_from != "consolidation":
            t = ctx.task.index
            self.generated = self._generate(ctx, self.errwise.cases, f"task_{t:02d}", f"gen/T{t + 1}")

    def _generate(self, ctx: TaskContext, cases, name: str, uid_prefix: str) -> list[RelationInstance]:
        """Send one round's error cases to the instructor; the accepted instances. Every block (accepted or
        rejected, with the reason) goes to `instructor/<name>.jsonl`, the counts and cost to
        `instructor/<name>_summary.json`."""
        ic = ctx.cfg.instructor
        kw = {"batch_size": ctx.cfg.eval.batch_size, "max_length": ctx.cfg.train.max_length}
        requests = plan_requests(ctx.model, ctx.tok, cases, ic, ctx.relation, **kw)
        if not requests:
            return []
        if self.backend is None:
            self.backend = make_backend(ic, ctx.run_dir)
        known = {r.name.lower(): r for r in ctx.seen}
        taken = {normalise(x.text) for t in ctx.stream.tasks for x in (*t.test, *t.train)}
        before = self.backend.stats()
        t0 = time.time()
        generated, rows = ask_instructor(self.backend, ic, requests, known, taken, uid_prefix)
        out = ctx.run_dir / "instructor"
        out.mkdir(exist_ok=True)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {
            "backend": self.backend.description,
            "model": ic.model,
            "mode": ic.mode,
            "errors_from": ic.errors_from,
            "verify": ic.verify,
            "temperature": ic.temperature,
            "seed": ic.seed,
            "error_cases": sum(p != x.relation for x, _, p in cases),
            "sent": len(requests),
            "accepted": sum(r["status"] == "accepted" for r in rows),
            "rejected": dict(Counter(r["reason"] for r in rows if r["status"] == "rejected")),
            "cost": self.backend.cost_since(before),
            "wall_seconds": time.time() - t0,
            "first_request": request_messages(requests[0], ic),
        }
        (out / f"{name}_summary.json").write_text(json.dumps(summary, indent=1))
        return generated

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        return self.errwise.training_examples(ctx) + [ctx.plain(x, kind="generated") for x in self.generated]

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        """errwise's consolidation examples; with errors_from consolidation/both, also the instances the instructor
        writes from this round's errors (the memory of old relations the new task displaced)."""
        examples = self.errwise.consolidation_examples(ctx)
        if ctx.cfg.instructor.errors_from == "initial":
            return examples
        t = ctx.task.index
        cases = self.errwise.consolidation_cases
        new = self._generate(ctx, cases, f"task_{t:02d}_consolidation", f"gen/T{t + 1}c")
        return examples + [ctx.plain(x, kind="generated") for x in new]

    def end_task(self, ctx: TaskContext) -> None:
        self.errwise.end_task(ctx)

    def held_out(self, ctx: TaskContext):
        return self.errwise.held_out(ctx)

    def hints(self, instances):
        return None
